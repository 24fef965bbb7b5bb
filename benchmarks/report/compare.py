"""``python -m benchmarks.report.compare REFERENCE REPRODUCTION``: a reproduction against stored reference results,
run by run.

Runs are matched by run id, which hashes everything that changes a result (method config, seed, net,
schedules, data content), so a pair is the same experiment trained twice. For each pair: the reference and
reproduced accuracy and their difference, and the measured sizes. Sizes are deterministic given the same
training, so a size that differs says the training path differed (other hardware, library versions); an
accuracy within a few tenths of a point is ordinary run-to-run noise on a different machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmarks.report.tables import collect, varying_params

FIELDS = ["accuracy", "bits_remaining_pct", "weights_remaining_pct"]


def compare(reference: str | Path, reproduction: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per run finished in both folders (``*_ref``, ``*_new``, ``accuracy_diff``) and counts of the
    runs found in only one of them."""
    ref, new = (collect(p) for p in (reference, reproduction))
    ref, new = ref[ref.status == "ok"], new[new.status == "ok"]
    both = ref.merge(new[["run_id", *FIELDS, "train_seconds"]], on="run_id", suffixes=("_ref", "_new"))
    both["accuracy_diff"] = both.accuracy_new - both.accuracy_ref
    both = both.sort_values(["method", "params", "seed"]).reset_index(drop=True)
    for _, part in both.groupby("method"):  # the parameters that vary, not every default
        both.loc[part.index, "params"] = varying_params(part.params)
    cols = ["run_id", "method", "params", "seed", "accuracy_ref", "accuracy_new", "accuracy_diff",
            "bits_remaining_pct_ref", "bits_remaining_pct_new", "weights_remaining_pct_ref", "weights_remaining_pct_new",
            "train_seconds_ref", "train_seconds_new"]
    counts = {"both": len(both), "only_reference": len(set(ref.run_id) - set(new.run_id)),
              "only_reproduction": len(set(new.run_id) - set(ref.run_id))}
    return both[cols], counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reference", type=Path, help="results folder with the stored reference runs (e.g. results/cpu)")
    p.add_argument("reproduction", type=Path, help="results folder of the reproduction (e.g. repro/cpu)")
    p.add_argument("--csv", type=Path, help="also write the comparison to this CSV file")
    args = p.parse_args(argv)
    for folder in (args.reference, args.reproduction):
        if not (folder / "runs").is_dir():
            print(f"error: no runs in {folder}/runs; pass a results folder written by run_all.py", file=sys.stderr)
            return 2
    table, counts = compare(args.reference, args.reproduction)
    print(f"{counts['both']} runs finished in both, {counts['only_reference']} only in {args.reference}, "
          f"{counts['only_reproduction']} only in {args.reproduction}")
    if table.empty:
        print("nothing to compare: run ids hash the method config, seed, net, schedules and data content; "
              "reproduce with the same preset, grid and data")
        return 0
    same_size = (table.bits_remaining_pct_ref == table.bits_remaining_pct_new).sum()
    print(f"accuracy difference (reproduced − reference): mean {table.accuracy_diff.mean():+.2f}, "
          f"largest {table.accuracy_diff.abs().max():.2f} points; identical measured size in {same_size} of "
          f"{len(table)} runs\n")
    print(table.to_markdown(index=False, floatfmt=".2f"))
    if args.csv:
        try:
            table.to_csv(args.csv, index=False)
        except OSError as e:
            print(f"error: cannot write {args.csv} ({e.strerror or e}); pass --csv a writable path", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
