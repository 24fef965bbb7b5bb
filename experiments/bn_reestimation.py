"""How much accuracy do stale BatchNorm statistics cost each finished run of a results folder?

Every run's network is decoded from its ``model.packed`` and scored as stored (which must reproduce the
run's recorded accuracy), then calibrated as a grid calibrates every artifact since 2026-11-24
(``benchmarks.harness.calibration.calibrate_batchnorm``: BatchNorm running statistics re-estimated over
training batches, weights untouched) and scored again: for runs made without calibration (``--bn-batches 0``). Writes
``<out>/bn_reestimation.csv``; the run folders are not changed. Rows the file already holds for a run as it
stands (same id, same recorded accuracy, same number of batches) are kept, not measured again, so that a new
run costs only its own measurement.

    python experiments/bn_reestimation.py results/sc-recipe --data-dir ../shared/data
"""
from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmarks.accounting import packing
from benchmarks.argparsing import Parser
from benchmarks.compressed import to_module
from benchmarks.data import DataError, load_dataset
from benchmarks.harness.calibration import BN_BATCHES, calibrate_batchnorm
from benchmarks.harness.rundir import finished, missing_runs
from benchmarks.train import evaluate

log = logging.getLogger("bn_reestimation")


def measure(out: Path, data_dir: str | None, methods: list[str], n_batches: int = BN_BATCHES,
            old: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """One row per finished run of ``methods`` in ``out``, and how many of them were measured now: rows of
    ``old`` for a run as it stands (same id, recorded accuracy and ``n_batches``) are kept as they are, and so
    are its rows of other methods."""
    runs = [(f, r) for f in sorted(d for d in out.glob("runs/*") if d.is_dir())
            if (r := finished(f)) is not None and r["spec"]["method"] in methods]
    if not runs:
        raise ValueError(f"{out} has no finished run of {', '.join(methods)}")
    current = {(r["run_id"], r["accuracy"]) for _, r in runs}
    # rows of other methods stay as they are; those of ``methods`` only while they describe a run as it stands
    kept = [] if old is None else [row for row in old.to_dict("records") if row["method"] not in methods or (
        row["bn_batches"] == n_batches and (row["run_id"], row["accuracy"]) in current)]
    done = {(row["run_id"], row["accuracy"]) for row in kept if row["method"] in methods}
    todo = [(f, r) for f, r in runs if (r["run_id"], r["accuracy"]) not in done]
    datasets = {}
    rows = []
    for folder, r in tqdm(todo, desc="bn re-estimation", disable=None):
        spec = r["spec"]
        if spec["dataset"] not in datasets:
            datasets[spec["dataset"]] = load_dataset(spec["dataset"], data_dir)
        data = datasets[spec["dataset"]]
        artifact = packing.load(folder / "model.packed")
        decoded = evaluate(to_module(artifact), data.test)
        if abs(decoded - r["accuracy"]) > 1e-6:
            log.warning("run %s scores %.2f decoded, %.2f recorded", r["run_id"], decoded, r["accuracy"])
        calibrated = calibrate_batchnorm(artifact, data.train, n_batches, spec["train"]["batch_size"], spec["seed"])
        bn = evaluate(to_module(calibrated), data.test)
        rows.append({"run_id": r["run_id"], "method": spec["method"],
                     "params": json.dumps(spec["params"], sort_keys=True),
                     "seed": spec["seed"], "epochs": spec["train"]["epochs"], "accuracy": r["accuracy"],
                     "accuracy_decoded": decoded, "accuracy_bn_reestimated": bn,
                     "bits_remaining_pct": r["size"]["bits_remaining_pct"],
                     "bn_batches": n_batches, "torch": torch.__version__,
                     "measured": datetime.date.today().isoformat(), "gain": bn - decoded})
    return pd.DataFrame(kept + rows).sort_values("run_id"), len(rows)


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="results folder holding runs/ (e.g. results/sc-recipe)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $SCNN_DATA, else ./data)")
    p.add_argument("--methods", default="self_compression,float_control",
                   help="comma-separated methods whose runs are measured (default: %(default)s)")
    p.add_argument("--batches", type=int, default=BN_BATCHES,
                   help="training batches, of each run's batch size (default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batches < 1:
        print(f"error: --batches must be >= 1, got {args.batches}", file=sys.stderr)
        return 2
    if (error := missing_runs(args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    csv = args.out / "bn_reestimation.csv"
    try:
        df, n_new = measure(args.out, args.data_dir, args.methods.split(","), args.batches,
                            pd.read_csv(csv) if csv.is_file() else None)
    except (ValueError, KeyError, DataError, pd.errors.ParserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df.to_csv(csv, index=False)
    log.info("%d runs measured now, %d kept in %s; mean gain %.2f points", n_new, len(df) - n_new, csv, df.gain.mean())
    return 0


if __name__ == "__main__":
    sys.exit(main())
