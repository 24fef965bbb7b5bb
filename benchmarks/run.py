"""Train every registered method over its parameter grid and write tables and figures.

    python run_all.py                       # preset `paper` on a GPU, `cpu` otherwise, into results/<preset>/
    python run_all.py --preset smoke        # synthetic data, every method, in about 40 s
    python run_all.py --preset cpu --model resnet9x0.5 --out results/scale   # the cpu recipe at half width
    python run_all.py --methods float,self_compression --grid self_compression.gamma=0.01,0.1
    python run_all.py --describe self_compression   # its parameters, defaults and default grids

Finished runs in the output folder are reused (the log says how many); --rerun trains them again (each old
result stays until its new one is complete; the float models are kept unless --retrain-float), and
`python -m benchmarks.report.compare REF OUT` compares a reproduction with stored reference results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.argparsing import Parser
from benchmarks.data import DataError, load_dataset
from benchmarks.harness import executors
from benchmarks.harness.grid import bind_data, expand, float_warmups, parse_grid_overrides, run_all
from benchmarks.harness.presets import PRESETS, get_preset
from benchmarks.harness.migrate import migrate_folder
from benchmarks.harness.rundir import RESULT_SCHEMA, read_result, request_rerun
from benchmarks.models import model_label, parse_model
from benchmarks.report.figures import build_all
from benchmarks.device import pick_device, resolve_precision
from benchmarks.float_cache import float_cache_path, float_digest, request_float_retraining
from methods import ConfigError, UnknownMethodError, available_methods, get_method
from methods.registry import plugin_problems

log = logging.getLogger("run_all")  # the name the logs and their readers have always used
MAX_SEED = 2**32 - 1  # what every random generator the runs seed (torch, Python) accepts alike
MAX_EPOCHS = 1000  # a bound on plausible schedules: the paper preset trains 30
MAX_BN_BATCHES = 10_000


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: paper on a GPU, cpu otherwise)")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's: 0,1,2 for cpu and paper, 0 for "
                   "smoke)")
    p.add_argument("--epochs", type=int, help="override every compression method's epochs")
    p.add_argument("--grid", action="append", default=[], metavar="METHOD.PARAM=V1,V2",
                   help="override one parameter's grid values (repeatable)")
    p.add_argument("--model", metavar="NAME[xWIDTH]",
                   help="the network, overriding the preset's, e.g. resnet9x0.5 (part of each run id and float-model "
                        "cache key; default: the preset's, resnet9x0.25 for cpu, resnet9x1.0 for paper)")
    p.add_argument("--dataset", choices=["cifar10", "synthetic"], help="override the preset's data set")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $SCNN_DATA, else ./data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training arithmetic; part of each run's id (default: auto: in a folder of runs, theirs; in a "
                        "new one bf16 where the device runs it natively, else fp32); every score is taken in fp32 "
                        "from the decoded file")
    p.add_argument("--bn-batches", type=int, metavar="N",
                   help="training batches over which every artifact's BatchNorm statistics are re-estimated before "
                        "it is scored (default: the preset's, 20; 0 keeps the training's statistics, as runs "
                        "before 2026-11-24 did)")
    p.add_argument("--out", help="results folder (default: results/<preset>/)")
    p.add_argument("--rerun", action="store_true",
                   help="train the grid's finished runs again instead of reusing them; each old result stays in place "
                        "until its new one is complete, and the float models they start from are kept")
    p.add_argument("--retrain-float", action="store_true",
                   help="also train the float models the grid starts from again (each replaced only once trained) and "
                        "the grid's runs with them; names the finished runs outside the grid that started from them")
    p.add_argument("--mix-runs", action="store_true",
                   help="let runs of another data set, network family or float schedule (another preset) into a "
                        "results folder that holds runs already (refused by default: one folder, one kind of run)")
    p.add_argument("--jobs", type=int, default=1, help="grid points run in parallel processes (default: 1)")
    p.add_argument("--list-methods", action="store_true", help="print the registered method names and exit")
    p.add_argument("--verbose", action="store_true", help="with --list-methods: each method's parameters and grids")
    p.add_argument("--describe", metavar="METHOD", help="print one method's parameters, defaults and grids and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    executors.add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.verbose and not args.list_methods:
            raise ConfigError("--verbose goes with --list-methods (each method's parameters and grids)")
        if args.describe is not None:  # "" too: an empty name is an unknown method, never "no name given"
            print(describe(args.describe))
            return 0
        if args.list_methods:
            names = available_methods()
            print(("\n\n" if args.verbose else "\n").join(describe(n) if args.verbose else n for n in names))
            for problem in plugin_problems():
                log.warning("%s", problem)
            return 0
        return _run(args)
    except BrokenPipeError:  # the reader stopped reading (`| head`): not an error; nothing more is printed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, UnknownMethodError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # only an absent --preset means the default: --preset "" is an unknown preset, not a grid started by mistake
    preset_name = args.preset if args.preset is not None else ("paper" if torch.cuda.is_available() else "cpu")
    try:
        preset = get_preset(preset_name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if args.dataset:
        preset = replace(preset, dataset=args.dataset)
    if args.model is not None:
        try:
            preset = replace(preset, model=parse_model(args.model))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if args.methods is not None and not [m for m in args.methods.split(",") if m.strip()]:
        raise ConfigError("--methods is empty; name methods (see --list-methods) or leave it out for every method")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else available_methods()
    seeds = [_int(s, "--seeds") for s in args.seeds.split(",")] if args.seeds is not None else list(preset.seeds)
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seeds must lie in [0, {MAX_SEED}] (the range every seeded generator accepts), got {seed}")
    if args.epochs is not None and not 1 <= args.epochs <= MAX_EPOCHS:
        raise ConfigError(f"--epochs must lie in [1, {MAX_EPOCHS}], got {args.epochs} (a cpu-preset epoch takes "
                          f"~35 s on 2 cores, a width-1.0 one ~8 min)")
    if args.bn_batches is not None and args.bn_batches > MAX_BN_BATCHES:
        raise ConfigError(f"--bn-batches must lie in [0, {MAX_BN_BATCHES}], got {args.bn_batches}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.bn_batches is not None and args.bn_batches < 0:
        raise ConfigError(f"--bn-batches must be 0 (off) or more, got {args.bn_batches}")
    if args.jobs > (os.cpu_count() or 1):
        log.warning("--jobs %d is more than the %d cores here: runs will compete for them", args.jobs, os.cpu_count())
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; name a results folder (default: results/<preset>)")
    cluster = executors.from_args(args)  # None: the local executor
    device = pick_device(args.device)
    out = Path(args.out if args.out is not None else f"results/{preset.name}")
    stored = _stored_configs(out)
    held = {c["train"]["precision"] for c in stored if isinstance(c.get("train"), dict) and "precision" in c["train"]} \
        if args.precision == "auto" else set()
    if len(held) == 1:  # a folder keeps the arithmetic it was trained in, whatever this host would pick
        precision = held.pop()
        log.info("--precision auto: %s, the precision of the runs already in %s", precision, out)
    else:
        precision = resolve_precision(args.precision, device)
    if cluster is not None and args.precision == "auto":
        log.info("--precision auto resolved on this machine to %s; pass it explicitly if the workers differ",
                 precision)
    # methods named on the command line must work; of all registered ones, broken plugins are skipped
    specs = expand(preset, methods, seeds, parse_grid_overrides(args.grid), args.epochs, strict=bool(args.methods),
                   precision=precision, bn_batches=args.bn_batches)
    _check_writable(out)
    _check_one_kind(stored, out, specs, args.mix_runs)
    migrated = migrate_folder(out).get("migrated")  # stored runs of an older result schema count as finished
    if migrated:
        log.info("brought %d stored runs of %s to result schema %d (python -m benchmarks.harness.migrate)",
                 migrated, out, RESULT_SCHEMA)
    # loaded once here, which also checks the data up front; worker processes (--jobs, a cluster) load
    # their own, so the parent keeps it on the CPU (no CUDA context before forking)
    data = load_dataset(preset.dataset, args.data_dir, device if args.jobs <= 1 and not cluster else "cpu")
    specs = bind_data(specs, data)
    for problem in plugin_problems():  # none of them was asked for: that would have stopped the grid above
        log.warning("%s (skipped; the other methods still run)", problem)
    if args.rerun or args.retrain_float:
        _request_reruns(specs, out)
    if args.retrain_float:
        _request_float_retraining(specs, out)
    done = sum((r := read_result(out / "runs" / s.run_id, warn=False)) is not None and r["status"] == "ok"
               for s in specs)
    log.info("preset %s, %s, data %s (fingerprint %s), %s: %d runs into %s", preset.name,
             model_label(preset.model), data.name, data.fingerprint, precision, len(specs), out)
    if done:
        log.info("%d of %d runs already have results in %s and are reused, not retrained (pass --rerun to train "
                 "them again, or --out a fresh folder and compare with `python -m benchmarks.report.compare %s NEW`)",
                 done, len(specs), out, out)
    if cluster is None:
        results = run_all(specs, str(out), args.data_dir, args.device, args.jobs, data if args.jobs <= 1 else None)
    else:
        results = executors.run(cluster, specs, out, args.data_dir, args.device)
    build_all(out)
    failed = [r for r in results if r.get("status") != "ok"]
    log.info("%d runs ok, %d failed; tables in %s, figures in %s", len(results) - len(failed), len(failed),
             out / "tables.md", out / "figures")
    return 1 if failed else 0


def _request_reruns(specs: list, out: Path) -> None:
    """--rerun: mark the grid's finished runs to be trained again, beside their results (``rundir``)."""
    for s in specs:
        if not request_rerun(out / "runs" / s.run_id):
            log.warning("run %s is being trained by another process; --rerun leaves it to that process", s.run_id)


def _request_float_retraining(specs: list, out: Path) -> None:
    """--retrain-float: mark the float models the grid starts from to be trained again (``train.float_model``
    replaces each only once the new one is trained), naming the finished runs outside the grid that started
    from the old one: they keep their results, paired with a float model that is gone."""
    grid = {s.run_id for s in specs}
    for s in float_warmups(specs):
        path = float_cache_path(out / "cache", s.model, s.data_fingerprint, s.float_train)
        digest = float_digest(path) if path.is_file() else None
        request_float_retraining(path)
        others = sorted(r["run_id"] for f in sorted((out / "runs").iterdir()) if f.name not in grid
                        and (r := read_result(f, deep=False, warn=False)) is not None
                        and digest is not None and (r.get("budget") or {}).get("float_digest") == digest)
        log.warning("retraining float model %s (seed %d): %d finished runs outside this grid started from it and "
                    "keep their results%s", path.name, s.seed, len(others), f": {', '.join(others)}" if others else "")


def describe(name: str) -> str:
    """A method's parameters (type, default) and default grids, for --describe and --list-methods --verbose."""
    cls = get_method(name)
    try:
        default = cls.Config()
        needs_float = cls(default).needs_float_model
    except Exception as e:  # a plugin broken beyond import: say so instead of failing the whole listing
        return f"{name}: broken ({type(e).__name__}: {e}); fix or uninstall {cls.__module__}"
    doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "(no description)").strip().split("\n\n")[0]
    lines = [f"{name}: {' '.join(doc.split())}",
             f"  starts from the trained float model (with its defaults): {'yes' if needs_float else 'no'}"]
    fields = dataclasses.fields(cls.Config)
    lines.append("  parameters:" if fields else "  parameters: (none)")
    for f in fields:
        lines.append(f"    {f.name} = {getattr(default, f.name)!r}  ({type(getattr(default, f.name)).__name__})")
    for preset, grid in cls.default_grid.items():
        lines.append(f"  default grid, preset {preset}: " +
                     (", ".join(f"{k}={','.join(map(str, v))}" for k, v in grid.items()) or "(defaults only)"))
    return "\n".join(lines)


def _kind(d: dict) -> tuple:
    """What makes runs comparable in one folder: data set, network family, the float model's schedule."""
    model, float_train = d.get("model") or {}, d.get("float_train") or {}
    return d.get("dataset"), model.get("name"), float_train.get("epochs")


def _describe(kind: tuple) -> str:
    return f"{kind[0]} {kind[1]} (float model {kind[2]} epochs)"


def _stored_configs(out: Path) -> list[dict]:
    """The ``config.json`` of every run a results folder holds (none for a new folder), read once."""
    found = []
    for f in (out / "runs").glob("*/config.json"):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):  # a damaged folder: the grid names and redoes it
            continue
        if isinstance(d, dict):
            found.append(d)
    return found


def _check_one_kind(stored: list[dict], out: Path, specs: list, mix: bool) -> None:
    """Refuse a grid whose runs are of another kind than those ``out`` holds (``stored``: their configs),
    unless ``--mix-runs``."""
    held = set()
    for d in stored:
        try:
            held.add(_kind(d))
        except AttributeError:  # a damaged config: the grid names and redoes its run
            continue
    new = {_kind(s.as_dict()) for s in specs} - held
    if held and new and not mix:
        raise ConfigError(f"{out} holds runs of {', '.join(sorted(map(_describe, held)))}; this grid adds "
                          f"{', '.join(sorted(map(_describe, new)))}: pass --out a folder of its own, or --mix-runs")


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _check_writable(out: Path) -> None:
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        # a private probe: two grids starting on one folder must not delete each other's
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OSError(f"output folder {out} is not writable ({e.strerror}); pass --out to a writable folder") from None


if __name__ == "__main__":
    sys.exit(main())
