"""``python -m benchmarks.timing.step_speed OUT``: what one training step of each method costs against float
training of the same net, measured side by side in one process.

A method's hooks (quantizers in the forward pass, size terms, the surgery check after each step) are
overhead on every step; this measures it on the full network (self-compression at γ = 0, so nothing is
pruned while it is timed: the savings of pruning show in the runs' per-epoch times instead). Every method
runs the loop's own ``train_step`` on random batches of the preset's size, methods interleaved, ``--steps``
steps a timing, median of ``--repeats`` rounds after ``--warmup`` steps. Writes ``<out>/step_speed.csv``.
"""
from __future__ import annotations

import datetime
import logging
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from benchmarks.argparsing import Parser
from benchmarks.harness.presets import PRESETS, get_preset
from benchmarks.files import replacing
from benchmarks.device import pick_device, resolve_precision
from benchmarks.timing.steps import TIMED_WITH, setup_step, time_steps
from methods import available_methods, get_method

log = logging.getLogger(__name__)

def measure(methods: list[str], preset: str, precision: str, device: torch.device, repeats: int, steps: int,
            warmup: int) -> pd.DataFrame:
    """One row per method: median step time (ms) and its ratio to the float step."""
    names = ["float"] + [m for m in methods if m != "float"]
    p = get_preset(preset)
    steppers = {n: setup_step(n, p.model, replace(p.method_train, precision=precision), device) for n in names}
    for n, step in steppers.items():
        if warmup:
            time_steps(step, warmup, device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else reversed(names):  # alternate the order, so drift hits all alike
            times[n].append(time_steps(steppers[n], steps, device))
    median = {n: statistics.median(t) for n, t in times.items()}
    batch = p.method_train.batch_size
    return pd.DataFrame([{"method": n, "params": str(TIMED_WITH.get(n, {})), "precision": precision,
                          "device": device.type, "batch_size": batch,
                          "step_ms": 1000 * t, "float_step_ms": 1000 * median["float"],
                          "step_vs_float": t / median["float"], "images_per_s": batch / t, "repeats": repeats,
                          "steps": steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "measured": datetime.date.today().isoformat()} for n, t in median.items()])


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.timing.step_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write step_speed.csv into (e.g. results/cpu)")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="net and batch size (default: cpu)")
    p.add_argument("--methods", help="comma-separated methods (default: every registered one)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training arithmetic (default auto: bf16 where the device runs it natively, else fp32)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=9, help="rounds of timings; the median is kept (default 9)")
    p.add_argument("--steps", type=int, default=3, help="steps per timing")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each method first (default 3)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if min(args.repeats, args.steps) < 1 or args.warmup < 0:
            raise ValueError("--repeats and --steps must be at least 1, --warmup at least 0")
        device = pick_device(args.device)
        precision = resolve_precision(args.precision, device)
        methods = args.methods.split(",") if args.methods else available_methods()
        for m in methods:
            get_method(m)
        args.out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        print(f"error: {args.out} is a file; pass the folder to write step_speed.csv into", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    df = measure(methods, args.preset, precision, device, args.repeats, args.steps, args.warmup)
    with replacing(args.out / "step_speed.csv") as tmp:
        df.to_csv(tmp, index=False)
    log.info("training step against float (%s, %s, %d threads, pid %d):\n%s", precision, device,
             torch.get_num_threads(), os.getpid(),
             df[["method", "step_ms", "step_vs_float", "images_per_s"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
