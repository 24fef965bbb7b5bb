"""Methods compared at matched size: which one keeps more accuracy at the same bits remaining.

Grid points of two methods never land on the same sizes, so each method's accuracy is read off its own
curve (accuracy against bits remaining, linear in log(bits) between neighbouring grid points; never
extrapolated) at every size where both curves exist: the grid points of either method inside the range
both cover. The difference is taken seed by seed (each seed's curve against the same seed's curve of the
other method) and summarised as mean ± std over the seeds both have; it is called a win only when the mean
is more than two standard errors from zero, otherwise a tie (and with one seed there is no verdict).
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


def paired(df: pd.DataFrame, size: str = "bits_remaining_pct") -> pd.DataFrame:
    """One row per (net and data, pair of methods, matched size): both accuracies on the mean curves and the
    seed-wise difference (first method minus second). ``df`` is ``tables.collect``'s run table."""
    ok = df[(df.status == "ok") & ~df.method.isin(["float", "float_control"])].dropna(subset=[size, "accuracy"])
    rows = []
    for (model, _), part in ok.groupby(["model", "data_fingerprint"], dropna=False):
        for a, b in itertools.combinations(sorted(part.series.unique()), 2):  # a method, or one of its variants
            A, B = part[part.series == a], part[part.series == b]
            mean_a = A.groupby("params")[[size, "accuracy"]].mean()
            mean_b = B.groupby("params")[[size, "accuracy"]].mean()
            lo = max(mean_a[size].min(), mean_b[size].min())
            hi = min(mean_a[size].max(), mean_b[size].max())
            levels = sorted({x for x in pd.concat([mean_a[size], mean_b[size]]) if lo <= x <= hi})
            if not levels:
                continue
            acc_a = interpolate(mean_a[size], mean_a.accuracy, levels)
            acc_b = interpolate(mean_b[size], mean_b.accuracy, levels)
            seeds = sorted(set(A.seed) & set(B.seed))
            per_seed = np.array([interpolate(A[A.seed == s][size], A[A.seed == s].accuracy, levels)
                                 - interpolate(B[B.seed == s][size], B[B.seed == s].accuracy, levels)
                                 for s in seeds]).reshape(len(seeds), len(levels))
            for i, x in enumerate(levels):
                d = per_seed[:, i][np.isfinite(per_seed[:, i])]
                mean = float(d.mean()) if len(d) else math.nan
                std = float(d.std(ddof=1)) if len(d) > 1 else math.nan
                rows.append({"model": model, "method a": a, "method b": b, "bits remaining %": x,
                             "accuracy a %": acc_a[i], "accuracy b %": acc_b[i], "a − b (points)": mean,
                             "std": std, "seeds": len(d), "verdict": verdict(a, b, mean, std, len(d))})
    return pd.DataFrame(rows)


def verdict(a: str, b: str, mean: float, std: float, n: int) -> str:
    """``a`` or ``b`` when the mean difference is more than two standard errors from zero, else a tie."""
    if n < 2 or not math.isfinite(std):
        return "no verdict (1 seed)" if n == 1 else "no verdict"
    if abs(mean) <= 2 * std / math.sqrt(n):
        return "tie"
    return a if mean > 0 else b
