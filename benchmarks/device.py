"""The machine a run trains on: which device, which arithmetic, and a description of the host for its record.

Kept apart from the training loop because three things read it without training anything: the command
lines (``--device``, ``--precision``), the run records (``host()`` goes into every ``result.json``, so two
runs of one id that differ can be told apart by where they ran) and the reports.
"""
from __future__ import annotations

import logging
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")

#: whether ``auto`` may pick bf16 on native hardware. The rule (issue 28): the float model and
#: self-compression at γ = 0.1 on the ``cpu`` preset, 3 seeds each, trained in bf16 and in fp32; bf16 is
#: allowed when for both the mean accuracies differ by less than the larger of the two stds.
#: ``experiments/precision_table.py`` prints that table from ``results/cpu`` and ``results/cpu-bf16``, and a
#: test checks this flag against it. Measured 2026-12-02 on a 2-core AVX512-BF16 EPYC: float 87.14 ± 0.36
#: (fp32) against 87.08 ± 0.36 (bf16); γ = 0.1 83.52 ± 0.33 against 83.34 ± 0.44.
AUTO_PICKS_BF16 = True


def pick_device(name: str | None = None) -> torch.device:
    """The training device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use --device auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here ({torch.cuda.device_count()} CUDA devices); "
                         f"use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use --device auto, cpu, cuda or cuda:N")
    return dev


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) where there is none (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "", frozenset()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return model, frozenset(flags)


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets among AVX512-BF16 and AMX-BF16 (empty: bf16 is emulated)."""
    return sorted(_cpuinfo()[1] & {"avx512_bf16", "amx_bf16"})


def native_bf16(device: torch.device, cpu_flags: list[str] | None = None) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA device with bf16, or a CPU with
    AVX512-BF16 or AMX (``cpu_flags``: this CPU's, by default). Emulated bf16 is far slower than fp32 (0.2
    against 100 GFLOP/s measured on an AVX2-only EPYC), so ``auto`` never picks it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_bf16_flags() if cpu_flags is None else cpu_flags))


def resolve_precision(choice: str, device: torch.device, evidence: bool | None = None,
                      cpu_flags: list[str] | None = None) -> str:
    """``auto`` → bf16 where the device runs it natively and the evidence allows it (``evidence``, by default
    ``AUTO_PICKS_BF16``), else fp32; ``fp32`` and ``bf16`` as given. ``cpu_flags`` stands in for this CPU's
    flags (tests)."""
    if choice == "auto":
        allowed = AUTO_PICKS_BF16 if evidence is None else evidence
        return "bf16" if allowed and native_bf16(device, cpu_flags) else "fp32"
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r}; use --precision auto, fp32 or bf16")
    if choice == "bf16" and not native_bf16(device, cpu_flags):
        log.warning("bf16 is emulated on %s here: training will be far slower than in fp32", device)
    return choice


def host(device: torch.device | str | None = None) -> dict[str, object]:
    """Where a result is made: CPU model and its native bf16 sets, cores, torch's threads, the device and
    (on CUDA) the GPU's name. Recorded with every run, because a run of one id is bit-identical only on the
    same kind of host with the same threads (see the README's reproducibility contract)."""
    dev = torch.device(device) if device is not None else pick_device()
    model, _ = _cpuinfo()
    rec: dict[str, object] = {"cpu_model": model, "cpu_bf16": cpu_bf16_flags(), "cpu_count": os.cpu_count(),
                              "torch_threads": torch.get_num_threads(), "device": str(dev),
                              "native_bf16": native_bf16(dev)}
    if dev.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(dev)
    return rec
