import functools
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from benchmarks.models import ModelSpec, build_model


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    logging.getLogger("benchmarks").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _registry_restored():
    """Methods a test registers are gone after it: no test sees another's."""
    from methods import registry
    registry.available_methods()  # entry points loaded before the snapshot
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture
def tiny():
    spec = ModelSpec("tinycnn", 1.0)
    return spec, build_model(spec).eval()


@pytest.fixture
def small_resnet():
    spec = ModelSpec("resnet9", 0.125)
    return spec, build_model(spec).eval()


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode outputs depend on every channel."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


CODEBOOK = torch.tensor([-0.5, -0.125, 0.0, 0.25, 1.0])  # zero not at index 0


def skewed(shape: tuple[int, ...], lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    """Integer codes in [lo, hi] concentrated near the middle, as trained codes are (so entropy coding pays)."""
    mid = (lo + hi) / 2
    return (mid + torch.randn(shape, generator=g) * max(1.0, (hi - lo) / 6)).round().clamp(lo, hi).long()


def scheme_model(scheme: str, cm: "CompressedModel", seed: int = 0) -> "CompressedModel":
    """Every layer of a float export re-coded in ``scheme`` (or "mixed": one scheme per layer), with random
    skewed codes and output channel 1 of every layer dead (its weights decode to zero)."""
    from benchmarks.compressed import CompressedModel, LayerCode
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, L in enumerate(cm.layers):
        s = ("channel", "group", "codebook", "channel_scales", "float")[i % 5] if scheme == "mixed" else scheme
        c, shape = L.shape[0], L.shape
        view = (-1,) + (1,) * (len(shape) - 1)
        if s in ("channel", "channel_scales"):
            b = torch.randint(1, 7, (c,), generator=g)
            b[1] = 0
            half = torch.where(b > 0, 2 ** (b - 1), 0).view(view)
            codes = torch.maximum(torch.minimum(skewed(shape, -8, 7, g), half - 1), -half)
            codes[b > 0, 0] = -1  # no channel dies by accident
            codes[1] = 0
            extra = ({"exponents": torch.randint(-6, 1, (c,), generator=g)} if s == "channel" else
                     {"scales": torch.rand(c, generator=g) * 0.1 + 0.01})
            layers.append(LayerCode(L.name, L.kind, shape, L.full_shape, "channel", codes, bits=b, **extra))
        elif s == "group":
            gs, n = 7, L.codes.numel()
            b = torch.randint(1, 7, (-(-n // gs),), generator=g)
            first, last = L.codes[0].numel(), 2 * L.codes[0].numel()
            b[first // gs:(last - 1) // gs + 1] = 2  # channel 1 at depth 2, code 1: -1 + 1 * 3/3 = 0
            per = b.repeat_interleave(gs)[:n].view(shape)
            codes = torch.minimum(skewed(shape, 0, 63, g), 2 ** per - 1)
            codes.view(c, -1)[:, 0] = 0  # decodes to lo = -1: no channel dies by accident
            codes.view(-1)[first:last] = 1
            layers.append(LayerCode(L.name, L.kind, shape, L.full_shape, "group", codes, bits=b, lo=-1.0, hi=2.0,
                                    group_size=gs))
        elif s == "codebook":
            codes = skewed(shape, 0, 4, g)
            codes.view(c, -1)[:, 0] = 0
            codes[1] = 2
            layers.append(LayerCode(L.name, L.kind, shape, L.full_shape, "codebook", codes))
        else:
            w = L.codes.clone()
            w[1] = 0.0
            layers.append(LayerCode(L.name, L.kind, shape, L.full_shape, "float", w))
    uses_codebook = any(layer.scheme == "codebook" for layer in layers)
    return CompressedModel(cm.arch, cm.topology, layers, cm.others, CODEBOOK.clone() if uses_codebook else None)


def load_experiment(name: str):
    """The module of ``experiments/<name>.py`` (a script folder, not a package), for testing its functions."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _float_packed() -> bytes:
    from benchmarks.accounting.packing import to_bytes
    from methods import get_method

    spec = ModelSpec("tinycnn", 0.25)
    torch.manual_seed(0)
    return to_bytes(get_method("float").from_params().export(build_model(spec), spec))


def stored_run_files(folder: Path) -> str:
    """A valid ``model.packed`` (a small float net's) and an empty ``history.jsonl`` in ``folder``, so that a
    hand-made result passes the checks every reader makes of a finished run; returns the file's SHA-256, for
    the result's ``packed_sha256``. The numbers of the hand-made result are the test's, not the file's."""
    from benchmarks.harness.rundir import packed_digest

    data = _float_packed()
    (folder / "model.packed").write_bytes(data)
    (folder / "history.jsonl").write_text("")
    return packed_digest(data)


def stored_result(out: Path, run_id: str, method: str = "m", params: dict | None = None, accuracy: float = 50.0,
                  size: dict | None = None, spec: dict | None = None, **fields) -> Path:
    """Write a finished run's ``result.json`` at the current result schema into ``out/runs/run_id`` with what
    the reports read (``spec`` and ``fields`` override the defaults), beside ``stored_run_files``, for report
    tests that need no training."""
    import json

    from benchmarks.harness.rundir import RESULT_SCHEMA

    folder = out / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    result = {"schema": RESULT_SCHEMA, "status": "ok", "run_id": run_id, "accuracy": accuracy,
              "packed_sha256": stored_run_files(folder),
              "spec": {"method": method, "params": params or {}, "seed": 0, "dataset": "d", "data_fingerprint": "f",
                       "model": {"name": "n", "width": 1}, "train": {"epochs": 1, "precision": "fp32"}, **(spec or {})},
              "size": {"bits": 1, "bits_remaining_pct": 100.0, "weights_remaining_pct": 100.0, "weights_total": 1,
                       "weights_remaining": 1, "unique_values": 1, "value_entropy_per_weight": 0,
                       "value_entropy_per_weight_nonzero": 0, "packed_bytes": 1, **(size or {})},
              "budget": {"method_epochs": 1}, **fields}
    (folder / "result.json").write_text(json.dumps(result))
    return folder
