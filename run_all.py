#!/usr/bin/env python
"""Train every registered method over its parameter grid and write tables and figures.

    python run_all.py                       # preset `paper` on a GPU, `cpu` otherwise
    python run_all.py --preset smoke        # synthetic data, every method, in about 15 s
    python run_all.py --methods float,self_compression --grid self_compression.gamma=0.01,0.1
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import executors
from benchmarks.data import DataError, load_dataset
from benchmarks.figures import build_all
from benchmarks.grid import expand, parse_grid_overrides, run_all
from benchmarks.presets import PRESETS, get_preset
from benchmarks.train import pick_device
from methods import ConfigError, UnknownMethodError, available_methods
from methods.registry import PLUGIN_ERRORS

log = logging.getLogger("run_all")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: paper on a GPU, cpu otherwise)")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--epochs", type=int, help="override every compression method's epochs")
    p.add_argument("--grid", action="append", default=[], metavar="METHOD.PARAM=V1,V2",
                   help="override one parameter's grid values (repeatable)")
    p.add_argument("--dataset", choices=["cifar10", "synthetic"], help="override the preset's data set")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $SCNN_DATA, else ./data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--jobs", type=int, default=1, help="grid points run in parallel processes (default: 1)")
    p.add_argument("--list-methods", action="store_true", help="print the registered method names and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    executors.add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_methods:
        print("\n".join(available_methods()))
        return 0
    try:
        preset_name = args.preset or ("paper" if torch.cuda.is_available() else "cpu")
        try:
            preset = get_preset(preset_name)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
        if args.dataset:
            preset = replace(preset, dataset=args.dataset)
        methods = args.methods.split(",") if args.methods else available_methods()
        seeds = [_int(s, "--seeds") for s in args.seeds.split(",")]
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        cluster = executors.from_args(args)  # None: the local executor
        device = pick_device(args.device)
        # methods named on the command line must work; of all registered ones, broken plugins are skipped
        specs = expand(preset, methods, seeds, parse_grid_overrides(args.grid), args.epochs,
                       strict=bool(args.methods))
        out = Path(args.out)
        _check_writable(out)
        # loaded once here, which also checks the data up front; worker processes (--jobs, a cluster) load
        # their own, so the parent keeps it on the CPU (no CUDA context before forking)
        data = load_dataset(preset.dataset, args.data_dir, device if args.jobs <= 1 and not cluster else "cpu")
    except (ConfigError, UnknownMethodError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, err in PLUGIN_ERRORS.items():
        log.error("%s (skipped; the other methods still run)", err)
    log.info("preset %s: %d runs into %s", preset.name, len(specs), out)
    if cluster is None:
        results = run_all(specs, str(out), args.data_dir, args.device, args.jobs,
                          data if args.jobs <= 1 else None)
    else:
        try:
            results = executors.run(cluster, specs, out, args.data_dir, args.device)
        except ConfigError as e:  # e.g. a worker that does not see the output folder
            print(f"error: {e}", file=sys.stderr)
            return 2
    build_all(out)
    failed = [r for r in results if r.get("status") != "ok"]
    log.info("%d runs ok, %d failed; tables in %s, figures in %s", len(results) - len(failed), len(failed),
             out / "tables.md", out / "figures")
    return 1 if failed else 0


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _check_writable(out: Path) -> None:
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {out} is not writable ({e.strerror}); pass --out to a writable folder") from None


if __name__ == "__main__":
    sys.exit(main())
