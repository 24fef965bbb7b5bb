"""bf16 against fp32 training, the evidence behind ``--precision auto``: the same runs in two results folders.

Every run of the bf16 folder is matched with the run of the fp32 folder that has the same method, parameters,
network, data, calibration and seed, differing only in its training arithmetic (a bf16 self-compression run
starts from the bf16 float model: the whole pipeline is compared). Per grid point: both accuracies as
mean ± std over the seeds both have, the seed-by-seed difference, and the rule ``--precision auto`` follows
(``benchmarks.device.AUTO_PICKS_BF16``): bf16 may be picked where the device runs it natively when, at every
point, the means differ by less than the larger of the two stds. Prints Markdown; nothing is written.

    python experiments/precision_table.py results/cpu results/cpu-bf16
"""
from __future__ import annotations

import json
import sys

import pandas as pd

from benchmarks.argparsing import Parser
from benchmarks.report.runs import load
from benchmarks.report.tables import plus_minus
from benchmarks.harness.rundir import missing_runs

KEYS = ["method", "params", "model", "dataset", "data_fingerprint", "bn_batches", "seed"]


def precision_table(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point present in both run tables (``runs.load``), finished runs only."""
    a = fp32[(fp32.status == "ok") & (fp32.precision == "fp32")]
    b = bf16[(bf16.status == "ok") & (bf16.precision == "bf16")]
    both = a[KEYS + ["accuracy", "knob"]].merge(b[KEYS + ["accuracy"]], on=KEYS, suffixes=("_fp32", "_bf16"))
    rows = []
    for (method, params, model), g in both.groupby(["method", "params", "model"], sort=True):
        m32, s32 = g.accuracy_fp32.mean(), g.accuracy_fp32.std()
        m16, s16 = g.accuracy_bf16.mean(), g.accuracy_bf16.std()
        d = g.accuracy_bf16 - g.accuracy_fp32
        larger = max(s32, s16)
        knob = g.knob.dropna().iloc[0] if g.knob.notna().any() else None
        rows.append({"method": method, "setting": f"{knob}={json.loads(params)[knob]}" if knob else "—",
                     "model": model, "seeds": len(g),
                     "fp32 accuracy %": plus_minus(m32, s32, 2), "bf16 accuracy %": plus_minus(m16, s16, 2),
                     "bf16 − fp32 (points)": plus_minus(d.mean(), d.std(), 2).replace("-", "−"),
                     "|difference of means|": abs(m16 - m32), "larger std": larger,
                     "within the larger std": bool(len(g) >= 3 and abs(m16 - m32) < larger)})
    return pd.DataFrame(rows)


def bf16_allowed(table: pd.DataFrame, need: tuple[str, ...] = ("float", "self_compression")) -> bool:
    """The rule: every method in ``need`` has a point with 3 seeds or more, and every point's means differ by
    less than the larger std."""
    return bool(not table.empty and set(need) <= set(table.method[table.seeds >= 3])
                and table["within the larger std"].all())


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", nargs="?", default="results/cpu", help="results folder of fp32 runs (default: %(default)s)")
    ap.add_argument("bf16", nargs="?", default="results/cpu-bf16",
                    help="results folder of the same runs in bf16 (default: %(default)s)")
    args = ap.parse_args(argv)
    if (error := missing_runs(args.fp32, args.bf16)) is not None:
        print(error, file=sys.stderr)
        return 2
    table = precision_table(load(args.fp32).table, load(args.bf16).table)
    if table.empty:
        print(f"error: no run of {args.bf16} in bf16 has an fp32 twin in {args.fp32}", file=sys.stderr)
        return 2
    shown = table.assign(**{c: table[c].map(lambda v: f"{v:.2f}") for c in ("|difference of means|", "larger std")})
    print(shown.to_markdown(index=False))
    print(f"\n--precision auto may pick bf16 on native hardware: {'yes' if bf16_allowed(table) else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
