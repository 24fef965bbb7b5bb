"""The README's first screen, from stored results only: every method's accuracy against bits remaining on the
largest network measured, with the paper's point marked, and one row per method at two operating points.

    python -m benchmarks.report.headline results/cpu results/scale --dest results/scale

writes ``headline.md`` and ``figures/headline.{png,pdf}``. The operating points are read on each method's
default curve, seed by seed, against its own equal-budget control (``benchmarks.report.scale``): near-lossless
is the smallest size within 0.5 point of the control, the second the smallest within 1 point.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.files import replacing  # noqa: E402
from benchmarks.report.figures import _log_axis, _save  # noqa: E402
from benchmarks.report.scale import (PAPER, default_curve, folders_cli, load, mean_std_text, readings,  # noqa: E402
                                     summarise_readings)

METHODS = ("self_compression", "diffq", "weight_fixing")
POINTS = {"near-lossless (within 0.5 point)": 0.5, "within 1 point": 1.0}
SIZES = (("bits_remaining_pct", "bits"), ("coded_bits_pct", "coded bits"), ("weights_remaining_pct", "weights"))


MIN_SEEDS, MIN_POINTS = 3, 2  # a curve the operating points can be read on: a comparison needs 3 seeds


def largest_network(df: pd.DataFrame) -> tuple[str, str] | None:
    """(model, precision) of the largest network whose self-compression curve, against its equal-budget
    control, has at least ``MIN_POINTS`` grid points with ``MIN_SEEDS`` seeds each (a one-seed screen of a
    larger network does not replace a measured curve); None when no network has one."""
    curve = default_curve(df, "self_compression").dropna(subset=["vs_control"])
    seeds = curve.groupby(["model", "precision", "params"]).seed.nunique()
    points = (seeds >= MIN_SEEDS).groupby(["model", "precision"]).sum()
    measured = points[points >= MIN_POINTS].index
    if not len(measured):
        return None
    sizes = curve.groupby(["model", "precision"]).weights_total.first()
    return max(measured, key=lambda key: sizes[key])


def headline_table(df: pd.DataFrame, model: str, precision: str) -> pd.DataFrame:
    """One row per method on that network: its curve's seeds and, at each operating point, bits and weights
    remaining (%) as mean ± std (seeds) over the per-seed readings."""
    rows = []
    for method in METHODS:
        curve = default_curve(df, method)
        curve = curve[(curve.model == model) & (curve.precision == precision)]
        if curve.dropna(subset=["vs_control"]).empty:
            continue
        row = {"method": method, "seeds": curve.seed.nunique(), "grid points": curve.params.nunique(),
               "control accuracy %": mean_std_text(curve.groupby("seed").control_accuracy.first())}
        for label, threshold in POINTS.items():
            for size, name in SIZES:
                prunes = size != "weights_remaining_pct" or (curve[size] < 100).any()
                row[f"{label}: {name} %"] = (summarise_readings(readings(curve, size, threshold))["text"] if prunes
                                             else "100 (removes none)")
        rows.append(row)
    return pd.DataFrame(rows)


def headline_figure(df: pd.DataFrame, model: str, precision: str, folder: Path) -> None:
    """Accuracy of the exported model against bits remaining, each method's default curve (mean ± std over
    seeds), the equal-budget control as a band (mean ± std), the paper's point at the control's accuracy."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    controls = []
    for i, method in enumerate(METHODS):
        curve = default_curve(df, method)
        curve = curve[(curve.model == model) & (curve.precision == precision)]
        if curve.empty:
            continue
        g = curve.groupby("params")
        pts = pd.DataFrame({"x": g.bits_remaining_pct.mean(), "y": g.accuracy.mean(), "e": g.accuracy.std().fillna(0),
                            "n": g.seed.nunique()}).sort_values("x")
        epochs = curve.method_epochs.max()
        ax.errorbar(pts.x, pts.y, yerr=pts.e, fmt="o-", ms=4, color=f"C{i}", capsize=2,
                    label=f"{method} ({pts.n.max()} seed{'s' if pts.n.max() > 1 else ''}, {epochs:.0f} epochs)")
        controls.append(curve.groupby("seed").control_accuracy.first().dropna())
    control = pd.concat(controls) if controls else pd.Series(dtype=float)
    if len(control):
        m, s = control.mean(), control.std() if len(control) > 1 else 0.0
        ax.axhspan(m - s, m + s, color="grey", alpha=0.25, lw=0)
        ax.axhline(m, color="k", lw=0.8, label="equal-budget float controls (mean ± std)")
        ax.axhline(m - 1, color="k", lw=0.6, ls=":", label="1 point under the control")
        ax.plot(PAPER["bits_remaining_pct"], m, "*", color="k", ms=12,
                label="the paper: float accuracy at 3% of the bits (ResNet-9, 6.57 M weights)")
    _log_axis(ax.xaxis)
    ax.set_xlabel("bits remaining (%), measured from the packed file")
    ax.set_ylabel("test accuracy of the exported model (%)")
    ax.set_title(f"CIFAR-10, {model} ({precision}), each method fine-tuning the same float model", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=7)
    _save(fig, folder, "headline")


def write_headline(folders: list[Path], dest: Path) -> pd.DataFrame:
    df = load(folders)
    found = largest_network(df)
    lines = ["# Headline", "", f"Rebuilt {datetime.date.today().isoformat()} from "
             f"{', '.join(f'`{f}/runs/`' for f in folders)} by `python -m benchmarks.report.headline "
             f"{' '.join(map(str, folders))} --dest {dest}`.", ""]
    if found is None:
        lines += [f"No self-compression curve with an equal-budget control and {MIN_SEEDS} seeds at {MIN_POINTS} "
                  "grid points yet.", ""]
        table = pd.DataFrame()
    else:
        model, precision = found
        table = headline_table(df, model, precision)
        (dest / "figures").mkdir(parents=True, exist_ok=True)
        headline_figure(df, model, precision, dest / "figures")
        lines += [f"Network: {model}, {precision}. Sizes are % remaining, read on each method's curve seed by seed "
                  "against its own equal-budget control, mean ± std (seeds); `≤` where the grid's smallest "
                  "point is already within, `>` where no point is.", "", table.to_markdown(index=False), ""]
    with replacing(dest / "headline.md") as tmp:
        tmp.write_text("\n".join(lines))
    return table


def main(argv: list[str] | None = None) -> int:
    return folders_cli(argv, "python -m benchmarks.report.headline", __doc__.split("\n\n")[0], "headline.md",
                       write_headline)


if __name__ == "__main__":
    sys.exit(main())
