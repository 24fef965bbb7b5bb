"""``python -m benchmarks.timing.speed OUT``: measured inference speed of every finished run's decoded model against
the float model of the same net, and the multiply-accumulates each one really performs.

"Smaller" is not "faster": a run that drops 70% of its weights in the late, low-resolution layers may keep
most of its compute. So every model is rebuilt from its stored ``model.packed`` (removed channels
physically absent, as the accounting counts them) and timed against the uncompressed net (the folder's
trained float model when it has one) in one process, interleaved (the float net right before a run in even
rounds, right after it in odd ones), median of ``--repeats`` rounds: latency at batch 1 and throughput at
batch 256, on the CPU and, when there is one, on CUDA. Weights are stored as float32 and run as such: the
speed-up measured is that of structure (fewer channels), not of low-bit arithmetic, which PyTorch does not
execute. Writes ``<out>/speed.csv``; the reports add ``macs``, ``macs_remaining_pct`` and ``infer_speedup``
to ``results.csv`` and draw ``accuracy_vs_speedup`` from it.
"""
from __future__ import annotations

import copy
import datetime
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.accounting import packing
from benchmarks.argparsing import Parser
from benchmarks.compressed import to_module
from benchmarks.device import host
from benchmarks.harness.rundir import finished, missing_runs
from benchmarks.models import build_model
from benchmarks.report.figures import build_all


BATCHES = (1, 256)  # latency at batch 1, throughput at batch 256
MIN_SECONDS = 0.5  # each timing repeats the forward pass until at least this long has passed


def count_macs(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass of one image through every convolution and linear layer
    (BatchNorm, activations, pooling and residual sums are not counted)."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


@torch.no_grad()
def _seconds_per_batch(model: nn.Module, x: torch.Tensor, min_seconds: float = MIN_SECONDS) -> float:
    """Seconds per forward pass of ``x``, averaged over passes repeated for at least ``min_seconds``."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    model(x)  # warm-up (allocations, kernel selection)
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        model(x)
        n += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / n


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def measure(out: str | Path, repeats: int = 5, devices: list[str] | None = None,
            min_seconds: float = MIN_SECONDS) -> pd.DataFrame:
    """Time every finished run of ``out`` against its float net; one row per (run, device)."""
    devices = devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = []
    for folder in sorted(d for d in Path(out).glob("runs/*") if d.is_dir()):
        r = finished(folder)
        if r is not None:
            cm = packing.load(folder / "model.packed")
            runs.append((r, cm.arch, to_module(cm)))
    if not runs:
        raise ValueError(f"{Path(out) / 'runs'} holds no finished run to time; train one first (python run_all.py)")
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for arch in {a for _, a, _ in runs}:
            # the trained float model when the folder has one (same weights a user would run), else the net
            float_runs = [m for r, a, m in runs if a == arch and r["spec"]["method"] == "float"]
            ref = _prepare(copy.deepcopy(float_runs[0]) if float_runs else build_model(arch), device)
            ref_macs = count_macs(ref)
            mine = [(r, _prepare(m, device)) for r, a, m in runs if a == arch]
            times = {(r["run_id"], b): [] for r, _ in mine for b in BATCHES} | {("float", b): [] for b in BATCHES}
            xs = {b: torch.randn(b, 3, 32, 32, device=device) for b in BATCHES}
            if device.type == "cpu":
                xs = {b: x.contiguous(memory_format=torch.channels_last) for b, x in xs.items()}
            for i in tqdm(range(repeats), desc=f"speed {arch.name}x{arch.width:g} {dev_name}",
                          disable=None):
                for r, m in mine:  # interleaved, the float net right before or after each run, by turns
                    for b in BATCHES:
                        pair = [("float", ref), (r["run_id"], m)]
                        for key, net in pair if i % 2 == 0 else pair[::-1]:
                            times[(key, b)].append(_seconds_per_batch(net, xs[b], min_seconds))
            f1, f256 = (statistics.median(times[("float", b)]) for b in BATCHES)
            for r, m in mine:
                t1, t256 = (statistics.median(times[(r["run_id"], b)]) for b in BATCHES)
                macs = count_macs(m)
                rows.append({"run_id": r["run_id"], "method": r["spec"]["method"], "device": dev_name,
                             "macs": macs, "macs_remaining_pct": 100.0 * macs / ref_macs,
                             "latency_ms_b1": 1e3 * t1, "float_latency_ms_b1": 1e3 * f1,
                             "throughput_b256": 256 / t256, "float_throughput_b256": 256 / f256,
                             "infer_speedup": f256 / t256, "latency_speedup_b1": f1 / t1,
                             "repeats": repeats, "seconds_per_timing": min_seconds,
                             "threads": torch.get_num_threads(), "torch": torch.__version__,
                             **_where(device), "measured": datetime.date.today().isoformat()})
    return pd.DataFrame(rows)


def _where(device: torch.device | str) -> dict[str, object]:
    """The host a timing was made on (``device.host``): a speed-up holds for its kind of CPU, not in general."""
    h = host(device if torch.device(device).type != "cuda" or torch.cuda.is_available() else "cpu")
    return {"cpu_model": h["cpu_model"], "cpu_count": h["cpu_count"], "native_bf16": h["native_bf16"],
            **({"gpu": h["gpu"]} if "gpu" in h else {})}


def _ort_seconds(session, x: np.ndarray, min_seconds: float) -> float:
    """Seconds per ``session.run`` of ``x``, averaged over runs repeated for at least ``min_seconds``."""
    session.run(["logits"], {"images": x})  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        session.run(["logits"], {"images": x})
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / n


def measure_onnxruntime(out: str | Path, repeats: int = 5, min_seconds: float = MIN_SECONDS) -> pd.DataFrame:
    """Time every finished run's ``model.onnx`` (``benchmarks.export``) against the float run's, in
    onnxruntime's CPU provider with its default optimizations (what a deployment gets), and in its CUDA
    provider too where onnxruntime has one (onnxruntime-gpu), interleaved as ``measure`` does; one row per
    (run, device). ``ValueError`` when a run or the float run has no ``model.onnx``."""
    import onnxruntime  # the deploy extra: imported only when asked for

    runs = []
    for folder in sorted(d for d in Path(out).glob("runs/*") if d.is_dir()):
        r = finished(folder)
        if r is None:
            continue
        if not (folder / "model.onnx").is_file():
            raise ValueError(f"run {folder.name} has no model.onnx; run python -m benchmarks.export {out} first")
        runs.append((r, (folder / "model.onnx").read_bytes()))
    if not any(r["spec"]["method"] == "float" for r, _ in runs):
        raise ValueError(f"{out} has no finished float run to time against; run its float point first")
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else [])
    return pd.concat([_onnxruntime_rows(runs, repeats, min_seconds, device) for device in devices],
                     ignore_index=True)


def _onnxruntime_rows(found: list[tuple[dict, bytes]], repeats: int, min_seconds: float, device: str) -> pd.DataFrame:
    """``measure_onnxruntime``'s rows for one provider: ``found`` holds each finished run's result and ONNX file."""
    import onnxruntime

    from benchmarks.export import session

    runs = [(r, session(data, exact=False, device=device)) for r, data in found]
    ref = next(s for r, s in runs if r["spec"]["method"] == "float")
    xs = {b: np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32) for b in BATCHES}
    times = {(r["run_id"], b): [] for r, _ in runs for b in BATCHES} | {("float", b): [] for b in BATCHES}
    for i in tqdm(range(repeats), desc=f"speed onnxruntime {device}", disable=None):
        for r, sess in runs:
            for b in BATCHES:
                pair = [("float", ref), (r["run_id"], sess)]
                for key, s in pair if i % 2 == 0 else pair[::-1]:
                    times[(key, b)].append(_ort_seconds(s, xs[b], min_seconds))
    f1, f256 = (statistics.median(times[("float", b)]) for b in BATCHES)
    rows = []
    for r, _ in runs:
        t1, t256 = (statistics.median(times[(r["run_id"], b)]) for b in BATCHES)
        rows.append({"run_id": r["run_id"], "method": r["spec"]["method"], "runtime": "onnxruntime",
                     "device": device, "latency_ms_b1": 1e3 * t1, "float_latency_ms_b1": 1e3 * f1,
                     "throughput_b256": 256 / t256, "float_throughput_b256": 256 / f256,
                     "infer_speedup": f256 / t256, "latency_speedup_b1": f1 / t1, "repeats": repeats,
                     "seconds_per_timing": min_seconds, "onnxruntime": onnxruntime.__version__,
                     **_where(device), "measured": datetime.date.today().isoformat()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.timing.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="results folder holding runs/ (e.g. results/cpu)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is kept (default 5)")
    p.add_argument("--seconds", type=float, default=MIN_SECONDS,
                   help=f"each timing runs forward passes for at least this long (default {MIN_SECONDS})")
    p.add_argument("--device", action="append", choices=["cpu", "cuda"],
                   help="time on this device (repeatable; default: cpu, and cuda when present)")
    p.add_argument("--runtime", choices=["pytorch", "onnxruntime"], default="pytorch",
                   help="pytorch (eager, into speed.csv) or onnxruntime (every run's model.onnx from "
                        "benchmarks.export, CPU provider and CUDA's where present, into speed_onnxruntime.csv)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (error := missing_runs(args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    if args.repeats < 1 or not args.seconds > 0:
        print(f"error: --repeats must be at least 1 and --seconds above 0, got {args.repeats} and {args.seconds}",
              file=sys.stderr)
        return 2
    if "cuda" in (args.device or []) and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA device is available here; leave it out", file=sys.stderr)
        return 2
    try:
        if args.runtime == "onnxruntime":
            df = measure_onnxruntime(args.out, args.repeats, min_seconds=args.seconds)
        else:
            df = measure(args.out, args.repeats, args.device, min_seconds=args.seconds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # only onnxruntime's extra is optional: torch and the rest are required
        print(f"error: --runtime onnxruntime needs {e.name}: pip install 'scnn-bench[deploy]'", file=sys.stderr)
        return 2
    try:
        df.to_csv(args.out / ("speed.csv" if args.runtime == "pytorch" else "speed_onnxruntime.csv"), index=False)
        build_all(args.out)
    except OSError as e:
        print(f"error: cannot write into {args.out} ({e.strerror or e}); pass a writable results folder",
              file=sys.stderr)
        return 2
    print(df[["method", "device", *(["macs_remaining_pct"] if "macs_remaining_pct" in df else []),
              "latency_speedup_b1", "infer_speedup"]].to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
