"""Methods compared at matched size: which one keeps more accuracy at the same bits remaining.

Grid points of two methods never land on the same sizes, so each method's accuracy is read off its own
curve (accuracy against bits remaining, linear in log(bits) between neighbouring grid points; never
extrapolated) at every size where both curves exist: the grid points of either method inside the range
both cover. The difference is taken seed by seed (each seed's curve against the same seed's curve of the
other method, at the size the grid point has in that seed) and summarised as mean ± std over the seeds both
have; it is called a win only when the mean is more than two standard errors from zero, otherwise a tie, and
only over three seeds or more (fewer give no verdict: two seeds' std says almost nothing about the spread).

Methods whose training budgets differ (weight fixing's 30 epochs against 8) are also compared against their
own equal-budget controls: the same seed-wise difference of ``accuracy − control`` (``vs_control``), so that
extra training a method had is not counted as compression it did better.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd


def interpolate(bits: np.ndarray, accuracy: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Accuracy along the curve through (bits, accuracy) at the sizes ``at``, linear in log(bits); NaN
    outside the curve's range. Points at the same size are averaged."""
    curve = pd.DataFrame({"x": np.log(np.asarray(bits, float)), "y": np.asarray(accuracy, float)})
    curve = curve.groupby("x", as_index=False).y.mean()
    return np.interp(np.log(np.asarray(at, float)), curve.x, curve.y, left=np.nan, right=np.nan)


SIZE_LABELS = {"bits_remaining_pct": "bits remaining %", "coded_bits_pct": "coded bits remaining %"}


def paired(df: pd.DataFrame, size: str = "bits_remaining_pct") -> pd.DataFrame:
    """One row per (net and data, pair of methods, matched ``size``): the seed-wise difference (first method
    minus second) with both accuracies averaged over the same seeds, so that the row's columns subtract (a
    mean curve over every seed of each method would not, where their seeds differ), and, where both methods'
    runs have equal-budget controls (a ``vs_control`` column), the same difference against those controls. A
    size at which no seed's two curves both reach is left out. ``df`` is ``runs.load``'s run table."""
    controlled = "vs_control" in df
    ok = df[(df.status == "ok") & ~df.method.isin(["float", "float_control"])].dropna(subset=[size, "accuracy"])
    rows = []
    for (model, _), part in ok.groupby(["model", "data_fingerprint"], dropna=False):
        for a, b in itertools.combinations(sorted(part.series.unique()), 2):  # a method, or one of its variants
            A, B = part[part.series == a], part[part.series == b]
            size_a, size_b = A.groupby("params")[size].mean(), B.groupby("params")[size].mean()
            lo, hi = max(size_a.min(), size_b.min()), min(size_a.max(), size_b.max())
            # each matched size is a grid point of either method (the first at a size both share); a seed
            # is compared at that point's size in that seed, so that a one-point variant pairs with each
            # seed's curve of the other method even where its seeds' sizes differ from their mean
            points = {}
            for runs, sizes in ((A, size_a), (B, size_b)):
                for params, x in sizes.items():
                    if lo <= x <= hi and x not in points:
                        points[x] = runs[runs.params == params].groupby("seed")[size].mean()
            by_seed = {s: (A[A.seed == s], B[B.seed == s]) for s in sorted(set(A.seed) & set(B.seed))}
            for x in sorted(points):
                seeds = [s for s in by_seed if s in points[x].index]
                reads = _reads(by_seed, seeds, size, points[x], "accuracy")
                if not len(reads):
                    continue
                d = reads[:, 0] - reads[:, 1]
                mean, std = _mean_std(d)
                row = {"model": model, "method a": a, "method b": b, SIZE_LABELS.get(size, size): x,
                       "accuracy a %": reads[:, 0].mean(), "accuracy b %": reads[:, 1].mean(),
                       "a − b (points)": mean, "std": std, "seeds": len(d),
                       "verdict": verdict(a, b, mean, std, len(d))}
                if controlled:
                    vs = _reads(by_seed, seeds, size, points[x], "vs_control")
                    dc = vs[:, 0] - vs[:, 1]
                    mc, sc = _mean_std(dc)
                    row["a − b against controls"] = "—" if not len(dc) else (
                        f"{mc:.2f}" if len(dc) < 2 else f"{mc:.2f} ± {sc:.2f} ({len(dc)}): {verdict(a, b, mc, sc, len(dc))}")
                rows.append(row)
    return pd.DataFrame(rows)


def markdown(pairs: pd.DataFrame) -> str:
    """``paired``'s table as markdown, two decimals, a dash where one seed leaves no std (not "nan")."""
    return pairs.astype(object).where(pairs.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="—")


def _reads(by_seed: dict, seeds: list, size: str, at: pd.Series, value: str) -> np.ndarray:
    """Per seed, ``(a, b)``: curve ``a``'s and curve ``b``'s ``value`` at that seed's matched size, one row per
    seed; seeds where either curve does not reach it, or a run has no ``value``, are left out."""
    reads = np.array([_seed_reads(*by_seed[s], size, at[s], value) for s in seeds], dtype=float).reshape(-1, 2)
    return reads[np.isfinite(reads).all(axis=1)]


def _mean_std(d: np.ndarray) -> tuple[float, float]:
    return (float(d.mean()) if len(d) else math.nan), (float(d.std(ddof=1)) if len(d) > 1 else math.nan)


def _seed_reads(a: pd.DataFrame, b: pd.DataFrame, size: str, at: float, value: str) -> tuple[float, float]:
    """One seed's ``value`` on curve ``a`` and on curve ``b`` at the size ``at`` (NaN outside either)."""
    a, b = a.dropna(subset=[value]), b.dropna(subset=[value])
    if a.empty or b.empty:
        return math.nan, math.nan
    return float(interpolate(a[size], a[value], [at])[0]), float(interpolate(b[size], b[value], [at])[0])


def verdict(a: str, b: str, mean: float, std: float, n: int) -> str:
    """``a`` or ``b`` when the mean difference is more than two standard errors from zero, else a tie; fewer than
    three seeds give no verdict (the project's rule for any comparison claim)."""
    if n < 3 or not math.isfinite(std):
        return f"no verdict ({n} seed{'' if n == 1 else 's'})"
    if abs(mean) <= 2 * std / math.sqrt(n):
        return "tie"
    return a if mean > 0 else b
