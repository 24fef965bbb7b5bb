"""The README's accuracy-against-size table of a results folder: one row per grid point, means over seeds.

Per curve (a method, or one of its variants) and knob value: seeds, accuracy as scored and before BatchNorm
calibration, the equal-budget control and the seed-by-seed difference to it, bits, coded bits and weights
remaining, distinct values and value entropy, as mean ± std over the seeds (``tables.summary``). A curve whose
parameters are the method's defaults is named by the method alone; a variant by what it changes. Prints
Markdown; nothing is written.

    python experiments/accuracy_table.py results/cpu
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from benchmarks.argparsing import Parser
from benchmarks.harness.rundir import missing_runs
from benchmarks.report.runs import REFERENCES, curve_label, load
from benchmarks.report.tables import plus_minus, summary



def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table's rows from ``runs.load``'s run table ``df``: curves by name, knobs falling within each."""
    s = summary(df)
    rows = []
    for r in s.itertuples():
        params = json.loads(r.params)
        knob = _knob(df, r.params)
        curve = curve_label(r.method, params, knob, s[s.method == r.method].params)
        rows.append({
            "method": curve,
            "knob": f"{knob}={params[knob]:g}" if knob else "—", "seeds": r.seeds,
            "accuracy %": plus_minus(r.accuracy_mean, r.accuracy_std, 2),
            "before calibration %": _or_dash(r.accuracy_before_calibration_mean, r.accuracy_before_calibration_std, 2),
            "equal-budget control %": "—" if r.method in REFERENCES else
                                      _or_dash(r.control_accuracy_mean, r.control_accuracy_std, 2, "not run"),
            "vs control (points)": _or_dash(r.vs_control_mean, r.vs_control_std, 2).replace("-", "−"),
            "bits remaining %": plus_minus(r.bits_remaining_pct_mean, r.bits_remaining_pct_std, 2),
            "coded bits remaining %": _or_dash(r.coded_bits_pct_mean, r.coded_bits_pct_std, 2),
            "weights remaining %": plus_minus(r.weights_remaining_pct_mean, r.weights_remaining_pct_std, 1),
            "unique values": f"{r.unique_values_mean:.0f}",
            "value entropy bits/weight (without 0)": f"{r.value_entropy_per_weight_mean:.2f} "
                                                     f"({r.value_entropy_per_weight_nonzero_mean:.2f})",
            "order": (r.method, curve, -(params[knob] if knob else 0)),
        })
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)


def _knob(df: pd.DataFrame, params: str) -> str | None:
    """The knob the runs with these parameters recorded (γ, λ, δ), or None (float model, controls)."""
    knobs = df[df.params == params].knob.dropna()
    return knobs.iloc[0] if len(knobs) else None


def _or_dash(mean: float, std: float, digits: int, missing: str = "—") -> str:
    return missing if pd.isna(mean) else plus_minus(mean, std, digits)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results/cpu", help="results folder (default: %(default)s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (error := missing_runs(out)) is not None:
        print(error, file=sys.stderr)
        return 2
    table = accuracy_table(load(out).table)
    if table.empty:
        print(f"error: {out} has no finished run", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
