"""The paper's headline across network sizes, from stored results only.

The paper reports float accuracy at 3% of the bits and 18% of the weights (ResNet-9 of 6.57 M weights). For
each network found in the results folders given, this reads off self-compression's curve the smallest bits
and weights remaining at which it stays within 1 (and 0.5) point of its equal-budget control, seed by seed,
and compares it with DiffQ at matched bits (the paper's second claim):

    python -m benchmarks.report.scale results/cpu results/scale --dest results/scale

writes ``scale.md`` and ``figures/scale.{png,pdf}`` into ``--dest``. Only each method's default curve is read
(the ``cpu`` preset's grid settings, its knob moving along the curve); every other variant is left out.

**Reading a curve.** Per seed, the runs of the curve sorted by size, each with its accuracy minus the
same seed's control (``vs_control``); the reading is where the curve last crosses ``−threshold`` going up in
size, linear in log(size) between neighbouring grid points, so that every larger grid point is within. A
curve whose smallest point is already within gives "≤ that size" (the grid does not reach the limit); one
with no point within gives "> its largest size". Readings are summarised as mean ± std over seeds; a censored
seed makes the mean a bound, marked as such.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.argparsing import Parser  # noqa: E402
from benchmarks.files import replacing  # noqa: E402
from benchmarks.harness.rundir import missing_runs  # noqa: E402
from benchmarks.report.figures import _log_axis, _save  # noqa: E402
from benchmarks.report.paired import markdown, paired  # noqa: E402
from benchmarks.report.runs import load as load_runs  # noqa: E402
from benchmarks.report.tables import plus_minus  # noqa: E402
from methods import get_method  # noqa: E402

THRESHOLDS = (1.0, 0.5)  # points under the equal-budget control
#: the paper's headline: ResNet-9 (6,568,640 weights, the ``paper`` preset's net) at float accuracy
PAPER = {"weights_total": 6_568_640, "bits_remaining_pct": 3.0, "weights_remaining_pct": 18.0}
SIZES = {"bits_remaining_pct": "bits", "weights_remaining_pct": "weights"}


def default_curve(df: pd.DataFrame, method: str, preset: str = "cpu") -> pd.DataFrame:
    """The finished runs of ``method`` whose parameters, the knob aside, are the method's defaults with the
    preset's single-valued grid settings (e.g. ``from_float=True``): the curve the study sweeps."""
    cls = get_method(method)
    grid = cls.default_grid.get(preset, {})
    ref = dataclasses.asdict(cls.Config(**{k: v[0] for k, v in grid.items() if k != cls.knob and len(v) == 1}))
    ref.pop(cls.knob, None)

    def is_default(params: str) -> bool:
        p = json.loads(params)
        p.pop(cls.knob, None)
        return p == ref

    runs = df[(df.method == method) & (df.status == "ok")]
    return runs[runs.params.map(is_default).astype(bool)]


def crossing(sizes: np.ndarray, diffs: np.ndarray, threshold: float) -> tuple[float, str]:
    """(size, bound) where the curve through (sizes, diffs) last rises through ``−threshold``, linear in
    log(size); bound is "" for a reading, "≤" when even the smallest size is within, ">" when none is."""
    order = np.argsort(sizes)
    sizes, y = np.asarray(sizes, float)[order], np.asarray(diffs, float)[order]
    x = np.log(sizes)
    outside = np.flatnonzero(y < -threshold)
    if not len(outside):
        return float(sizes[0]), "≤"
    i = outside[-1]
    if i == len(x) - 1:
        return float(sizes[-1]), ">"
    t = (-threshold - y[i]) / (y[i + 1] - y[i])
    return float(np.exp(x[i] + t * (x[i + 1] - x[i]))), ""


def readings(curve: pd.DataFrame, size: str, threshold: float) -> pd.DataFrame:
    """Per (model, precision, seed) of a curve's runs, the ``crossing`` of its ``vs_control`` in ``size``."""
    rows = []
    runs = curve.dropna(subset=["vs_control", size])
    for (model, precision, seed), g in runs.groupby(["model", "precision", "seed"]):
        g = g.groupby("params")[[size, "vs_control"]].mean()  # one point per grid point
        value, bound = crossing(g[size].to_numpy(), g.vs_control.to_numpy(), threshold)
        rows.append({"model": model, "precision": precision, "seed": seed, "value": value, "bound": bound,
                     "points": len(g)})
    return pd.DataFrame(rows, columns=["model", "precision", "seed", "value", "bound", "points"])


def summarise_readings(r: pd.DataFrame) -> dict:
    """Mean ± std of one network's per-seed readings, as a bound where any seed's is censored."""
    if r.empty:
        return {"mean": math.nan, "std": math.nan, "seeds": 0, "bound": "", "text": "—"}
    mean, std = r.value.mean(), r.value.std() if len(r) > 1 else math.nan
    bounds = set(r.bound) - {""}
    bound = ">" if ">" in bounds else "≤" if "≤" in bounds else ""
    return {"mean": mean, "std": std, "seeds": len(r), "bound": bound, "text": bound + mean_std_text(r.value)}


def scale_table(df: pd.DataFrame, method: str = "self_compression") -> pd.DataFrame:
    """One row per (network, precision): its size, the float model's and the control's accuracy, and the
    smallest bits and weights remaining (%) within each threshold of the control, read on ``method``'s curve."""
    curve = default_curve(df, method)
    ok = df[df.status == "ok"]
    rows = []
    for (model, precision), part in curve.groupby(["model", "precision"]):
        same = ok[(ok.model == model) & (ok.precision == precision)]
        floats, controls = same[same.method == "float"], same[same.method == "float_control"]
        controls = controls[controls.schedule.isin(part.schedule)]  # the curve's own equal-budget control
        row = {"model": model, "precision": precision, "weights": int(part.weights_total.iloc[0]),
               "float accuracy %": mean_std_text(floats.accuracy), "control accuracy %": mean_std_text(controls.accuracy),
               "curve points": part.params.nunique(), "seeds": part.seed.nunique()}
        for threshold in THRESHOLDS:
            for size, name in SIZES.items():
                s = summarise_readings(readings(part, size, threshold))
                row[f"{name} % within {threshold:g}"] = s["text"]
                row[f"_{name}_{threshold:g}"] = (s["mean"], s["std"], s["bound"])
        rows.append(row)
    return pd.DataFrame(rows).sort_values("weights", kind="stable") if rows else pd.DataFrame()


def matched_diffq(df: pd.DataFrame) -> pd.DataFrame:
    """Self-compression against DiffQ at matched bits, per network (``paired`` on the two default curves)."""
    both = pd.concat([default_curve(df, "self_compression"), default_curve(df, "diffq")])
    if both.empty:
        return pd.DataFrame()
    both = both.assign(series=both.method, model=both.model + " " + both.precision)
    pairs = paired(both)
    return pairs[(pairs["method a"] == "diffq") & (pairs["method b"] == "self_compression")] if len(pairs) else pairs


def mean_std_text(values: pd.Series) -> str:
    """Mean ± std (seeds) of ``values`` with their count, or a dash where there are none."""
    return "—" if values.empty else f"{plus_minus(values.mean(), values.std(), 2)} ({len(values)})"


def scale_figure(table: pd.DataFrame, folder: Path) -> None:
    """Bits and weights remaining within 1 and 0.5 point of the control, against the network's size (log);
    the paper's 3% / 18% marked. Hollow markers are bounds (the grid does not reach the limit); each network
    is labelled with the arithmetic its runs trained in."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    millions = table.weights.to_numpy(float) / 1e6
    for ax, name in zip(axes, SIZES.values()):
        for j, threshold in enumerate(THRESHOLDS):
            stats = table[f"_{name}_{threshold:g}"]
            x = millions * (1.03 if j else 1.0)  # side by side, not on top
            mean = np.array([s[0] for s in stats])
            std = np.array([0.0 if math.isnan(s[1]) else s[1] for s in stats])
            ax.errorbar(x, mean, yerr=std, fmt="-", color=f"C{j}", alpha=0.6)
            for xi, m, (_, _, bound) in zip(x, mean, stats):
                ax.plot(xi, m, "o", color=f"C{j}", mfc="none" if bound else f"C{j}", ms=6)
            ax.plot([], [], "o-", color=f"C{j}", label=f"within {threshold:g} point of the equal-budget control")
        ax.plot(PAPER["weights_total"] / 1e6, PAPER[f"{name}_remaining_pct"], "*", color="k", ms=12,
                label="the paper: float accuracy at 3% of the bits, 18% of the weights (6.57 M weights)")
        ax.set_xscale("log")
        ax.set_xticks(list(millions) + [PAPER["weights_total"] / 1e6],
                      [f"{m:.2f} M\n{model.split('x')[-1]}×, {p}" for m, model, p in
                       zip(millions, table.model, table.precision)] + [f"{PAPER['weights_total'] / 1e6:.2f} M\nthe paper"])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        _log_axis(ax.yaxis)
        ax.set_xlabel("network size (weights; ResNet-9 width, training arithmetic)")
        ax.set_ylabel(f"smallest {name} remaining (%)")  # the title names the method: a long label meets it
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=2)
    fig.suptitle("Self-compression within 1 and 0.5 point of its control, by network size (hollow: a bound)",
                 fontsize=9)
    _save(fig, folder, "scale")


def load(folders: list[Path]) -> pd.DataFrame:
    """The finished and failed runs of every folder, once each, CIFAR-10 only: the question is about it, and
    a smoke run never answers it."""
    df = pd.concat([load_runs(f).table for f in folders], ignore_index=True).drop_duplicates("run_id")
    return df[df.dataset != "synthetic"]


def write_scale(folders: list[Path], dest: Path) -> pd.DataFrame:
    """``scale.md`` and ``figures/scale.{png,pdf}`` in ``dest`` from the runs of ``folders``."""
    df = load(folders)
    table = scale_table(df)
    lines = ["# Self-compression across network sizes", "",
             f"Rebuilt from {', '.join(f'`{f}/runs/`' for f in folders)} by `python -m benchmarks.report.scale "
             f"{' '.join(map(str, folders))} --dest {dest}`. Smallest size (% remaining) at which self-compression's "
             "default curve stays within 1 and 0.5 point of its equal-budget control, read seed by seed on the "
             "curve (linear in log size), as mean ± std (seeds); `≤` where the grid's smallest point is already "
             "within, `>` where no point is. The paper: float accuracy at 3% of the bits and 18% of the weights.",
             ""]
    if table.empty:
        lines += ["No self-compression curve with equal-budget controls yet.", ""]
    else:
        lines += [table[[c for c in table.columns if not c.startswith("_")]].to_markdown(index=False), ""]
        folder = dest / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        scale_figure(table, folder)
    pairs = matched_diffq(df)
    if not pairs.empty:
        lines += ["## DiffQ against self-compression at matched bits, per network", "",
                  "Each seed's curve of each method read at the grid points of either inside the range both "
                  "cover (`benchmarks.report.paired`); both accuracies and `a − b`, taken seed by seed, are means "
                  "over the seeds both have there.", "",
                  markdown(pairs), ""]
    with replacing(dest / "scale.md") as tmp:
        tmp.write_text("\n".join(lines))
    return table


def folders_cli(argv: list[str] | None, prog: str, description: str, written: str,
                write: Callable[[list[Path], Path], pd.DataFrame]) -> int:
    """The command line of a report read from several results folders (this one and ``headline``): the
    folders, ``--dest``, one line and exit 2 for a folder without runs or an unwritable destination."""
    p = Parser(prog=prog, description=description)
    p.add_argument("folders", nargs="+", help="results folders holding runs/ (e.g. results/cpu results/scale)")
    p.add_argument("--dest", help=f"where {written} and figures/ go (default: the last folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = [Path(f) for f in args.folders]
    if (error := missing_runs(*folders)) is not None:
        print(error, file=sys.stderr)
        return 2
    dest = Path(args.dest) if args.dest else folders[-1]
    try:
        dest.mkdir(parents=True, exist_ok=True)
        write(folders, dest)
    except OSError as e:
        print(f"error: cannot write into {dest} ({e.strerror or e}); pass --dest a writable folder", file=sys.stderr)
        return 2
    print(dest / written)
    return 0


def main(argv: list[str] | None = None) -> int:
    return folders_cli(argv, "python -m benchmarks.report.scale", __doc__.split("\n\n")[0], "scale.md", write_scale)


if __name__ == "__main__":
    sys.exit(main())
