"""Figures and tables from stored results alone: ``python -m benchmarks.report.figures results/cpu``.

No training code is imported and no GPU is needed: every figure is rebuilt from ``<out>/runs/*``, read once
(``runs.load``).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.argparsing import Parser  # noqa: E402
from benchmarks.files import replacing  # noqa: E402
from benchmarks.harness.rundir import missing_runs  # noqa: E402
from benchmarks.report.runs import Runs, curve_labels, load  # noqa: E402
from benchmarks.report.tables import summary, write_tables  # noqa: E402


def pareto(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not beaten on both smaller ``x`` and larger ``y``."""
    best, keep = -float("inf"), []
    for i, r in df.sort_values([x, y], ascending=[True, False]).iterrows():
        if r[y] > best:
            best = r[y]
            keep.append(i)
    return df.loc[keep]


#: no creation date or software version in the files: a figure rebuilt from the same runs is the same bytes
#: on the same kind of CPU, so rebuilding the committed figures leaves a clone clean (PNGs on any host; a PDF
#: rebuilt on another kind of CPU may differ in the sixth decimal of a layout coordinate: a rounding difference
#: in the layout arithmetic, whose source was not traced)
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def _save(fig: plt.Figure, folder: Path, name: str) -> None:
    for ext in ("png", "pdf"):
        with replacing(folder / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=METADATA[ext])
    plt.close(fig)


def _log_axis(axis: matplotlib.axis.Axis) -> None:
    """A log scale labelled with plain numbers (1, 2, 5, 10, 20, 50, ...) rather than powers of ten; an axis
    spanning less than a factor of 4 (all points between 5 and 10%, say) labels every tick, or it could show
    no number at all."""
    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))

    def minor(v: float, _) -> str:
        lo, hi = sorted(axis.get_view_interval())
        return f"{v:g}" if f"{v:g}"[0] in "25" or hi < 4 * lo else ""

    axis.set_minor_formatter(ticker.FuncFormatter(minor))


def _reference_line(ax: plt.Axes, series: str, label: str, part: pd.DataFrame) -> bool:
    """Draw the float model (dashed) or an equal-budget control (its mean, and its spread over seeds as a band)
    as a horizontal reference; False for a compression method's series, which the caller draws as points."""
    if not series.startswith("float"):
        return False
    mean, std = part.accuracy_mean.mean(), part.accuracy_std.fillna(0).mean()
    line = ax.axhline(mean, color="k", ls="--" if series == "float" else ":", lw=1, label=label)
    if series != "float" and std > 0:
        ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.12, lw=0)
    return True


PAPER = {"bits": 3.0, "weights": 18.0}  # the paper's headline: float accuracy at these % (ResNet-9, 6.57 M weights)


def _paper_point(ax: plt.Axes, axis: str, s: pd.DataFrame) -> None:
    """The paper's point on the bits and weights plots, at the accuracy of this folder's float reference
    (the self-compression control where there is one, else the float model)."""
    ref = s[s.series.str.startswith("float_control") & s.params.str.contains("self_compression")]
    ref = ref if not ref.empty else s[s.method == "float"]
    if axis in PAPER and not ref.empty:
        ax.plot(PAPER[axis], ref.accuracy_mean.mean(), "*", color="k", ms=11,
                label=f"the paper: float accuracy at {PAPER[axis]:g}% of the {axis}")


def _legend_below(fig: plt.Figure, ax: plt.Axes) -> None:
    """The legend under the axes, never over the points: curve names with their varying parameters are long."""
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=7)


def _label(labels: dict[str, str], series: str, model: str, s: pd.DataFrame) -> str:
    """A curve's legend label: its name (``runs.curve_label``), and its network where a folder has several."""
    name = labels.get(series, series)
    return f"{name} ({model})" if s.model.nunique() > 1 else name


def accuracy_figure(s: pd.DataFrame, axis: str, folder: Path, labels: dict[str, str] | None = None) -> None:
    """Accuracy against ``axis`` remaining: "bits" (fixed-length), "coded_bits" (as stored) or "weights"."""
    labels = labels or {}
    x = "coded_bits_pct" if axis == "coded_bits" else f"{axis}_remaining_pct"
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for (method, model), part in s.groupby(["series", "model"]):
        if _reference_line(ax, method, _label(labels, method, model, s), part):
            continue
        part = part[part[f"{x}_mean"].notna()]  # runs stored in packed format v1 have no coded bits
        if part.empty:
            continue
        bars = ax.errorbar(part[f"{x}_mean"], part.accuracy_mean, xerr=part[f"{x}_std"].fillna(0),
                           yerr=part.accuracy_std.fillna(0), fmt="o", ms=4, alpha=0.6,
                           label=_label(labels, method, model, s))
        front = pareto(part.rename(columns={f"{x}_mean": "x", "accuracy_mean": "y"}), "x", "y")
        ax.plot(front.x, front.y, "-", color=bars[0].get_color())
    _paper_point(ax, axis, s)
    _log_axis(ax.xaxis)
    ax.set_xlabel({"coded_bits": "coded bits remaining (%), as stored in the packed file"}.get(
        axis, f"{axis} remaining (%)"))
    ax.set_ylabel("test accuracy of the exported model (%)")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(fig, ax)
    _save(fig, folder, f"accuracy_vs_{axis}")


def speedup_figure(s: pd.DataFrame, folder: Path, labels: dict[str, str] | None = None) -> bool:
    """Accuracy against measured inference speed-up (``benchmarks.timing.speed``): what compression buys at run time."""
    labels = labels or {}
    s = s[s.infer_speedup_mean.notna()]
    if s.empty:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for (method, model), part in s.groupby(["series", "model"]):
        if _reference_line(ax, method, _label(labels, method, model, s), part):
            continue
        ax.errorbar(part.infer_speedup_mean, part.accuracy_mean, xerr=part.infer_speedup_std.fillna(0),
                    yerr=part.accuracy_std.fillna(0), fmt="o", ms=4, alpha=0.7, label=_label(labels, method, model, s))
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("inference speed-up over the float net (batch 256, measured, CPU)")
    ax.set_ylabel("test accuracy of the exported model (%)")
    ax.grid(True, alpha=0.3)
    _legend_below(fig, ax)
    _save(fig, folder, "accuracy_vs_speedup")
    return True


def runtime_speedup_figure(out: Path, df: pd.DataFrame, folder: Path, labels: dict[str, str]) -> bool:
    """Accuracy against measured speed-up at batch 256, one panel per runtime: PyTorch eager (``speed.csv``)
    and onnxruntime (``speed_onnxruntime.csv``, every run's ``model.onnx``); points are means over seeds."""
    f = out / "speed_onnxruntime.csv"
    if not f.is_file():
        return False
    try:
        ort = pd.read_csv(f)
        ort = ort[ort.device == "cpu"][["run_id", "infer_speedup"]].rename(columns={"infer_speedup": "ort_speedup"})
    except (OSError, ValueError, KeyError):
        return False
    runs = df[df.status == "ok"].merge(ort, on="run_id", how="left")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained", sharey=True)
    for ax, column, title in ((axes[0], "infer_speedup", "PyTorch eager (CPU)"),
                              (axes[1], "ort_speedup", "onnxruntime (CPU provider)")):
        for (series, model), part in runs.dropna(subset=[column]).groupby(["series", "model"]):
            g = part.groupby("params")[[column, "accuracy"]].agg(["mean", "std"])
            ax.errorbar(g[(column, "mean")], g[("accuracy", "mean")], xerr=g[(column, "std")].fillna(0),
                        yerr=g[("accuracy", "std")].fillna(0), fmt="o", ms=4, alpha=0.7,
                        label=_label(labels, series, model, runs))
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("inference speed-up over the float net (batch 256, measured)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy of the exported model (%)")
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=7)
    _save(fig, folder, "accuracy_vs_speedup_by_runtime")
    return True


def _labels(runs: Runs, results: list[dict], knob: str) -> list[str]:
    """A legend label per run of one method: its ``knob`` (γ, δ), what else names its curve in every figure
    (``runs.curve_labels``: the parameters that differ from the defaults, epochs, calibration and precision where
    they vary), its network where the runs have several, and the seed."""
    table = runs.table.set_index("run_id")
    rows = [table.loc[r["run_id"]] for r in results]
    names = curve_labels(runs.table[runs.table.status == "ok"])
    symbol = {"delta": "δ", "gamma": "γ"}.get(knob, knob)
    several = len({row.model for row in rows}) > 1
    return [" ".join(filter(None, [f"{symbol}={r['spec']['params'].get(knob)}",
                                   names[row.series].removeprefix(row.method).strip(),
                                   row.model if several else "", f"s{r['spec']['seed']}"]))
            for r, row in zip(results, rows)]


def _styles(labels: list[str]) -> list[dict]:
    """One colour (and past ten points, marker) per grid point, the label without its seed, and one line
    style per seed: the seeds of a point read as one family of lines, and seed 1 looks alike everywhere."""
    points, seeds = zip(*(label.rsplit(" s", 1) for label in labels)) if labels else ((), ())
    order = sorted(set(seeds), key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else 0, x))
    index = {p: i for i, p in enumerate(dict.fromkeys(points))}
    return [dict(color=f"C{index[p] % 10}", marker="os^D"[index[p] // 10 % 4], ms=3,
                 ls=("-", "--", ":", "-.")[order.index(seed) % 4], label=label)
            for label, p, seed in zip(labels, points, seeds)]


def _histories(runs: Runs, method: str, knob: str, need: set[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, history DataFrame) of every finished run of ``method`` whose history has the columns ``need``."""
    found = [(r, runs.history(r["run_id"])) for r in runs.finished(method)]
    found = [(r, h) for r, h in found if not h.empty and need <= set(h.columns)]
    labels = _labels(runs, [r for r, _ in found], knob)
    return sorted(zip(labels, (h for _, h in found)), key=lambda c: c[0])


def weight_fixing_figure(runs: Runs, folder: Path) -> bool:
    """Per fixing round: unique fixed values and test accuracy of each weight-fixing run."""
    curves = _histories(runs, "weight_fixing", "delta", {"round", "share_fixed", "unique_fixed", "test_acc"})
    if not curves:
        return False
    moved = any("mean_abs_dw" in h.columns for _, h in curves)  # a panel only where some history records it
    fig, axes = plt.subplots(1, 3 if moved else 2, figsize=(15 if moved else 10, 5), layout="constrained")
    for (_, h), style in zip(curves, _styles([label for label, _ in curves])):
        last = h.groupby("round").tail(1)  # the end of each round's retraining
        axes[0].plot(100 * last.share_fixed, last.unique_fixed, **style)
        axes[1].plot(100 * last.share_fixed, last.test_acc, **style)
        if "mean_abs_dw" in last.columns:
            moving = last[last.mean_abs_w_unfixed > 0]  # the last round leaves nothing unfixed to move
            axes[2].plot(100 * moving.share_fixed, 100 * moving.mean_abs_dw / moving.mean_abs_w_unfixed, **style)
    axes[0].set_ylabel("unique values among fixed weights")
    axes[1].set_ylabel("test accuracy (%)")
    if moved:
        axes[2].set_ylabel("mean |Δw| in the round / mean |w| (%), unfixed weights")
    for a in axes:
        a.set_xlabel("weights fixed (%)")
        a.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=7, ncols=2)
    _save(fig, folder, "weight_fixing_rounds")
    return True


def training_curve_figure(runs: Runs, folder: Path) -> bool:
    """Bits and weights remaining over training for self-compression runs (the paper's training curve), and,
    for runs that recorded it, each epoch's training time against the float model's epochs: whether the
    shrinking network trains faster."""
    curves = _histories(runs, "self_compression", "gamma", {"epoch", "bits_remaining_pct", "weights_remaining_pct"})
    if not curves:
        return False
    timed = [c for c in curves if "epoch_time_vs_float" in c[1].columns]
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4), layout="constrained")
    for (_, h), style in zip(curves, _styles([label for label, _ in curves])):  # a run's style in every panel
        axes[0].plot(h.epoch, h.bits_remaining_pct, **style)
        axes[1].plot(h.epoch, h.weights_remaining_pct, **style)
        if "epoch_time_vs_float" in h.columns:
            axes[2].plot(h.epoch, h.epoch_time_vs_float, **style)
    axes[0].set_ylabel("bits remaining (%), exported model")
    axes[1].set_ylabel("weights remaining (%), exported model")
    for a in axes[:2]:
        _log_axis(a.yaxis)
    if timed:
        axes[2].axhline(1.0, color="k", lw=0.8)
        axes[2].set_ylabel("step time / float model's step time")
    for a in axes:
        a.set_xlabel("epoch")
        a.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    rows = -(-len(names) // 3)  # below the panels in three columns, the figure grown to hold it: a recipe
    fig.set_figheight(4 + 0.15 * rows)  # screen has dozens of runs, which a legend inside a panel would crush
    fig.legend(handles, names, loc="outside lower center", fontsize=7, ncols=3)
    _save(fig, folder, "self_compression_training")
    return True


def layers_figure(runs: Runs, folder: Path) -> bool:
    """Per layer of each self-compression run, as measured from its packed file: the share of the layer's
    weights left and the bits each remaining weight takes: where a recipe spends its bits."""
    results = [r for r in runs.finished("self_compression") if r["size"].get("layers")]
    if not results:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(16, 4.5), layout="constrained")
    labelled = sorted(zip(_labels(runs, results, "gamma"), results), key=lambda c: c[0])
    for (_, r), style in zip(labelled, _styles([label for label, _ in labelled])):
        layers = pd.DataFrame(r["size"]["layers"])
        axes[0].plot(layers.layer, 100 * layers.weights_remaining / layers.weights_total, **style)
        axes[1].plot(layers.layer, layers.mean_bits, **style)
    axes[0].set_ylabel("weights remaining in the layer (%)")
    axes[1].set_ylabel("bits per remaining weight")
    for a in axes:
        a.set_xlabel("layer (input to output)")
        a.tick_params(axis="x", labelrotation=45)
        a.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=7)
    _save(fig, folder, "self_compression_layers")
    return True


def build_all(out: str | Path, dest: str | Path | None = None) -> list[Path]:
    """Rebuild results.csv, tables.md and every figure (under ``figures/``) from the runs in ``out``, into
    ``dest`` (default ``out``)."""
    runs = load(out)
    dest = Path(dest) if dest is not None else runs.out
    dest.mkdir(parents=True, exist_ok=True)
    df = write_tables(runs, dest)
    folder = dest / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    s = summary(df)
    labels = curve_labels(df[df.status == "ok"])
    if not s.empty:
        accuracy_figure(s, "bits", folder, labels)
        accuracy_figure(s, "weights", folder, labels)
    if not s.empty and s.coded_bits_pct_mean.notna().any():  # runs stored in packed format v1 have none
        accuracy_figure(s, "coded_bits", folder, labels)
    if not s.empty:
        speedup_figure(s, folder, labels)
        runtime_speedup_figure(runs.out, df, folder, labels)
    training_curve_figure(runs, folder)
    layers_figure(runs, folder)
    weight_fixing_figure(runs, folder)
    return sorted(folder.glob("*"))


def main(argv: list[str] | None = None) -> int:
    p = Parser(description="Rebuild tables and figures from stored results (no training).")
    p.add_argument("out", nargs="?", default="results/cpu", help="results folder holding runs/ (default: results/cpu)")
    p.add_argument("--dest", help="where to write results.csv, tables.md and figures/ (default: the results folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (error := missing_runs(args.out)) is not None:
        print(error, file=sys.stderr)
        return 2
    try:
        files = build_all(args.out, args.dest)
    except OSError as e:
        print(f"error: cannot write tables and figures into {args.dest or args.out} ({e.strerror or e}); "
              f"pass --dest a writable folder", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
