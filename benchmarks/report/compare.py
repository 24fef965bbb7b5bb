"""``python -m benchmarks.report.compare REFERENCE REPRODUCTION``: a reproduction against stored reference results,
run by run.

Runs are matched by run id, which hashes everything that changes a result (method config, seed, net,
schedules, data content), so a pair is the same experiment trained twice. For each pair: the reference and
reproduced accuracy and their difference, the measured sizes, whether the two packed files are the same
bytes (each checked against the checksum its run recorded), and which half of the reproducibility contract
applies. The contract: a run is bit-identical when trained again with the same config and data on the same
kind of host (CPU model, device and GPU), with the same torch threads and library versions; otherwise it
agrees within seed noise (a few tenths of a point; sizes may differ too, since the training path differed).
``contract`` says which applies to each pair and ``holds`` whether it did: a pair that should be
bit-identical and is not is a bug worth reporting.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from benchmarks.argparsing import Parser
from benchmarks.files import RunFileError
from benchmarks.harness.rundir import check_packed, missing_runs
from benchmarks.report.runs import Runs, load
from benchmarks.report.tables import varying_params

log = logging.getLogger(__name__)

FIELDS = ["accuracy", "bits_remaining_pct", "weights_remaining_pct"]
#: what must be equal for two runs of one id to be bit-identical (``result.json``'s environment)
HOST_KIND = ("cpu_model", "device", "gpu", "torch_threads")
LIBRARIES = ("torch", "numpy")


def _facts(runs: Runs, run_id: str) -> tuple[str | None, tuple | None]:
    """(the packed file's recorded checksum, the host kind it was made on) of a finished run whose files check
    out; (None, None) where they do not (named in a warning), the kind None where the run predates host
    records."""
    r = runs.results[run_id]
    try:
        check_packed(runs.out / "runs" / run_id, r)
    except RunFileError as e:
        log.warning("run %s of %s: %s", run_id, runs.out, e)
        return None, None
    env = r.get("environment") or {}
    host = env.get("host")
    kind = None if not isinstance(host, dict) else (*(host.get(k) for k in HOST_KIND), *(env.get(k) for k in LIBRARIES))
    return r.get("packed_sha256"), kind


def contract(same_kind: bool | None, identical: bool) -> tuple[str, str]:
    """(which half of the contract applies, whether it held) for one pair of runs."""
    if same_kind:
        return "bit-identical", "yes" if identical else "NO: same host kind, different file"
    why = "seed noise" if same_kind is False else "seed noise (host not recorded)"
    return why, "identical" if identical else "see accuracy_diff"


def compare(reference: str | Path, reproduction: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per run finished in both folders (``*_ref``, ``*_new``, ``accuracy_diff``) and counts of the
    runs found in only one of them."""
    runs_ref, runs_new = load(reference), load(reproduction)
    ref, new = runs_ref.table, runs_new.table
    ref, new = ref[ref.status == "ok"], new[new.status == "ok"]
    both = ref.merge(new[["run_id", *FIELDS, "train_seconds"]], on="run_id", suffixes=("_ref", "_new"))
    both["accuracy_diff"] = both.accuracy_new - both.accuracy_ref
    facts = [(_facts(runs_ref, i), _facts(runs_new, i)) for i in both.run_id]
    both["same_file"] = [a[0] is not None and a[0] == b[0] for a, b in facts]
    kinds = [None if a[1] is None or b[1] is None else a[1] == b[1] for a, b in facts]
    both["contract"], both["holds"] = zip(*(contract(k, same) for k, same in zip(kinds, both.same_file))) \
        if len(both) else ([], [])
    both = both.sort_values(["method", "params", "seed"]).reset_index(drop=True)
    for _, part in both.groupby("method"):  # the parameters that vary, not every default
        both.loc[part.index, "params"] = varying_params(part.params)
    cols = ["run_id", "method", "params", "seed", "accuracy_ref", "accuracy_new", "accuracy_diff",
            "bits_remaining_pct_ref", "bits_remaining_pct_new", "weights_remaining_pct_ref", "weights_remaining_pct_new",
            "same_file", "contract", "holds", "train_seconds_ref", "train_seconds_new"]
    counts = {"both": len(both), "only_reference": len(set(ref.run_id) - set(new.run_id)),
              "only_reproduction": len(set(new.run_id) - set(ref.run_id))}
    return both[cols], counts


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.report.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reference", type=Path, help="results folder with the stored reference runs (e.g. results/cpu)")
    p.add_argument("reproduction", type=Path, help="results folder of the reproduction (e.g. repro/cpu)")
    p.add_argument("--csv", type=Path, help="also write the comparison to this CSV file")
    args = p.parse_args(argv)
    if (error := missing_runs(args.reference, args.reproduction)) is not None:
        print(error, file=sys.stderr)
        return 2
    if args.csv and (args.csv.is_dir() or not args.csv.parent.is_dir()):  # checked before the work, not after
        print(f"error: --csv {args.csv} is a folder or lies in no folder; pass a file path in an existing folder",
              file=sys.stderr)
        return 2
    table, counts = compare(args.reference, args.reproduction)
    print(f"{counts['both']} runs finished in both, {counts['only_reference']} only in {args.reference}, "
          f"{counts['only_reproduction']} only in {args.reproduction}")
    if table.empty:
        print("nothing to compare: run ids hash the method config, seed, net, schedules and data content; "
              "reproduce with the same preset, grid and data")
        return 0
    same_size = (table.bits_remaining_pct_ref == table.bits_remaining_pct_new).sum()
    broken = (table.contract == "bit-identical") & (table.holds != "yes")
    print(f"accuracy difference (reproduced − reference): mean {table.accuracy_diff.mean():+.2f}, "
          f"largest {table.accuracy_diff.abs().max():.2f} points; identical measured size in {same_size} and "
          f"identical packed file in {table.same_file.sum()} of {len(table)} runs; "
          f"{(table.contract == 'bit-identical').sum()} pairs were made on the same kind of host and should be "
          f"bit-identical, {broken.sum()} of them are not\n")
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
