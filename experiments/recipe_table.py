"""The README's table of the self-compression recipe screens (issue 14), built from a results folder.

One row per variant of the paper's recipe that the folder holds (``experiments/sc_recipe.sh`` trains them),
with mean ± std over its seeds of: accuracy as scored, accuracy with BatchNorm statistics re-estimated
(``<out>/bn_reestimation.csv``, written by ``experiments/bn_reestimation.py``; the run's own accuracy where the
run was calibrated itself), bits and weights remaining; the variant against the paper recipe's curve at the
same bits, seed by seed (``benchmarks.report.paired``: the same rule as ``tables.md``); and the float control
with the same budget. Prints Markdown; nothing is written.

    python experiments/recipe_table.py results/sc-recipe
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.argparsing import Parser
from benchmarks.harness.presets import get_preset
from benchmarks.report.paired import interpolate, verdict
from benchmarks.report.runs import load
from benchmarks.report.tables import plus_minus
from benchmarks.harness.rundir import missing_runs
from methods import get_method

METHOD = "self_compression"
PRESET = "cpu"  # the screens' preset: its method schedule is the baseline's
BASE_GAMMA = 0.1  # the γ every screen runs at unless its row says otherwise
# what each screened change is called in the README (keys: the parameters a variant changes, γ and epochs aside)
LABELS = {(): "baseline", ("eps_bits",): "(a) eps", ("lr_bits",): "(a) lr", ("eps_bits", "lr_bits"): "(a) lr and eps",
          ("gamma_warmup", "grace"): "(c) removal timing", ("bits_schedule",): "(b) b/e rate",
          ("epochs",): "(b) longer", ("epochs", "from_float"): "from scratch"}


def recipe_table(df: pd.DataFrame, reestimated: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per screened variant among the runs ``df`` (``runs.load``'s run table; see the module
    docstring), the baseline first; ``reestimated`` is ``bn_reestimation.csv`` where there is one."""
    df = df[df.status == "ok"].copy()
    df["calibrated"] = _calibrated(df, reestimated)
    base_params = {**get_method(METHOD).Config().__dict__, "from_float": True}
    base_epochs = get_preset(PRESET).method_train.epochs
    sc = df[df.method == METHOD].copy()
    sc["changed"] = [_changed(json.loads(p), e, base_params, base_epochs) for p, e in zip(sc.params, sc.epochs)]
    # the paper's recipe at every γ: the curve each variant is read against
    curve = sc[sc.changed.map(lambda c: all(k == "gamma" for k, _ in c))]
    controls = df[df.method == "float_control"]
    rows = []
    for changed, runs in sc.groupby(sc.changed.map(tuple), sort=False):
        keys = tuple(sorted(k for k, _ in changed if k != "gamma"))
        gamma = dict(changed).get("gamma", BASE_GAMMA)
        if not keys and gamma != BASE_GAMMA:
            continue  # a point of the baseline curve, not a screen
        label = LABELS.get(keys, " ".join(keys)) + (f" at γ = {gamma:g}" if gamma != BASE_GAMMA else "")
        control = controls[controls.schedule.isin(runs.schedule) & controls.seed.isin(runs.seed)].accuracy
        rows.append({
            "experiment": label,
            "changed": " ".join(f"`{k}={v}`" if k != "epochs" else f"`--epochs {v}`" for k, v in changed) or "—",
            "epochs": int(runs.epochs.iloc[0]), "seeds": runs.seed.nunique(),
            "accuracy %": _pm(runs.accuracy, 2), "BN re-estimated (calibrated) %": _pm(runs.calibrated, 2),
            "bits %": _pm(runs.bits_remaining_pct, 2), "weights %": _pm(runs.weights_remaining_pct, 1),
            "against the baseline curve (points)": "—" if not keys and gamma == BASE_GAMMA else _against(runs, curve),
            "control (same budget) %": _pm(control, 2) if len(control) else "not run",
            "order": (list(LABELS).index(keys) if keys in LABELS else len(LABELS), -gamma),
        })
    return pd.DataFrame(rows).sort_values("order").drop(columns="order").reset_index(drop=True)


def _changed(params: dict, epochs: int, base: dict, base_epochs: int) -> list[tuple[str, object]]:
    """The (parameter, value) pairs in which a run differs from the paper's recipe, γ and epochs included."""
    diff = [(k, v) for k, v in sorted(params.items()) if k == "gamma" and v != BASE_GAMMA
            or k != "gamma" and base.get(k) != v]
    return diff + ([("epochs", int(epochs))] if epochs != base_epochs else [])


def _calibrated(df: pd.DataFrame, reestimated: pd.DataFrame | None) -> pd.Series:
    """Per run, its accuracy with re-estimated BatchNorm statistics: its own where it was calibrated, else the
    row of ``reestimated`` for it as it stands (same id and recorded accuracy), else NaN."""
    rows = [] if reestimated is None else reestimated.itertuples()
    by_run = {(r.run_id, round(r.accuracy, 6)): r.accuracy_bn_reestimated for r in rows}
    return pd.Series([a if bn else by_run.get((rid, round(a, 6)), math.nan)
                      for rid, a, bn in zip(df.run_id, df.accuracy, df.bn_batches)], index=df.index, dtype=float)


def _against(runs: pd.DataFrame, curve: pd.DataFrame) -> str:
    """Each seed's accuracy minus the same seed's baseline curve at that seed's bits: mean ± std (n), verdict."""
    d = []
    for seed, run in runs.groupby("seed"):
        own = curve[curve.seed == seed]
        if len(own) > 1:
            d += list(run.accuracy - interpolate(own.bits_remaining_pct, own.accuracy, run.bits_remaining_pct))
    d = np.array(d)[np.isfinite(d)] if d else np.array([])
    if not len(d):
        return "outside the curve's range"
    std = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    says = {"variant": "the variant wins", "baseline": "the baseline wins", "tie": "a tie"}
    v = verdict("variant", "baseline", float(d.mean()), std, len(d))
    return _signed(d.mean()) + (f" ± {std:.2f}" if len(d) > 1 else "") + f" ({len(d)})" + (
        f": {says[v]}" if v in says else "")


def _pm(values: pd.Series, digits: int) -> str:
    """Mean ± std over the values there are, as ``tables.md`` writes it (the mean alone for one value)."""
    v = values.dropna()
    return "—" if v.empty else plus_minus(v.mean(), v.std(ddof=1), digits)


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results/sc-recipe", help="results folder (default: %(default)s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (error := missing_runs(out)) is not None:
        print(error, file=sys.stderr)
        return 2
    reestimated = out / "bn_reestimation.csv"
    table = recipe_table(load(out).table, pd.read_csv(reestimated) if reestimated.exists() else None)
    if table.empty:
        print(f"error: {out} has no finished {METHOD} run", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
