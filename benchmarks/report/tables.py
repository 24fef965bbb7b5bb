"""Results tables rebuilt from the run folders alone (no training code is imported)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.files import replacing
from benchmarks.report.paired import markdown, paired
from benchmarks.report.runs import Runs


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (method, params, model, dataset, schedule), finished runs only."""
    ok = df[df.status == "ok"].fillna({"data_fingerprint": ""})  # a key: groupby would drop a missing one
    keys = ["method", "series", "params", "model", "precision", "dataset", "data_fingerprint", "epochs", "bn_batches"]
    vals = ["accuracy", "accuracy_before_calibration", "bits_remaining_pct", "coded_bits_pct", "weights_remaining_pct",
            "unique_values", "code_entropy_bits", "value_entropy_per_weight", "value_entropy_per_weight_nonzero",
            "packed_bytes", "onnx_bytes", "macs_remaining_pct", "infer_speedup", "control_accuracy", "vs_control", "float_epochs",
            "method_epochs"]
    if ok.empty:
        return pd.DataFrame(columns=keys + ["seeds"] + [f"{v}_{s}" for v in vals for s in ("mean", "std")])
    g = ok.groupby(keys)
    out = g[vals].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out.insert(0, "seeds", g.size())
    # layers that lost every channel in any seed's run: such a network passes nothing through them
    out["collapsed_layers"] = g.collapsed_layers.agg(lambda x: " ".join(sorted({n for v in x.fillna("") for n in v.split()})))
    return out.reset_index()


def write_tables(runs: Runs, dest: str | Path | None = None) -> pd.DataFrame:
    """``results.csv`` and ``tables.md`` of a results folder's runs (``runs.load``), written into ``dest``
    (default the folder itself)."""
    out = runs.out
    dest = Path(dest) if dest is not None else out
    df = runs.table
    with replacing(dest / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    s = summary(df)
    lines = ["# Results", "", f"Rebuilt from `{out}/runs/` by `python -m benchmarks.report.figures {out}`.", ""]
    if s.data_fingerprint.nunique() > 1:
        lines += [f"Runs on {s.data_fingerprint.nunique()} different data sets (by content): the `data` column "
                  "gives each one's fingerprint; points on different data are never averaged.", ""]
    for method, part in s.groupby("method"):
        lines += [f"## {method}", ""]
        part = part.sort_values(["model", "bits_remaining_pct_mean"])  # by number, before formatting
        table = pd.DataFrame({
            "params": varying_params(part.params), "model": part.model, "epochs": part.epochs, "seeds": part.seeds,
            **({"BN batches": part.bn_batches} if s.bn_batches.nunique() > 1 else {}),
            **({"data": part.data_fingerprint} if s.data_fingerprint.nunique() > 1 else {}),
            "accuracy %": [plus_minus(m, v, 2) for m, v in zip(part.accuracy_mean, part.accuracy_std)],
            **({"before BN calibration %": ["—" if pd.isna(m) else plus_minus(m, v, 2) for m, v in
                                            zip(part.accuracy_before_calibration_mean,
                                                part.accuracy_before_calibration_std)]}
               if part.accuracy_before_calibration_mean.notna().any() else {}),
            **({"equal-budget control %": [plus_minus(m, v, 2) for m, v in zip(part.control_accuracy_mean,
                                                                          part.control_accuracy_std)],
                "vs control (points)": [plus_minus(m, v, 2) for m, v in zip(part.vs_control_mean, part.vs_control_std)]}
               if part.control_accuracy_mean.notna().any() else {}),
            **({"budget epochs (float + own)": [f"{a:.0f} + {b:.0f}" for a, b in zip(part.float_epochs_mean,
                                                                                   part.method_epochs_mean)]}
               if part.method_epochs_mean.notna().all() else {}),
            "bits remaining %": [plus_minus(m, v, 3) for m, v in zip(part.bits_remaining_pct_mean, part.bits_remaining_pct_std)],
            "coded bits remaining %": ["—" if pd.isna(m) else plus_minus(m, v, 3)
                                       for m, v in zip(part.coded_bits_pct_mean, part.coded_bits_pct_std)],
            "weights remaining %": [plus_minus(m, v, 2) for m, v in zip(part.weights_remaining_pct_mean,
                                                                  part.weights_remaining_pct_std)],
            "unique values": part.unique_values_mean.round(0).astype(int),
            "value entropy bits/weight (without 0)": [
                f"{a:.2f} ({b:.2f})" for a, b in zip(part.value_entropy_per_weight_mean,
                                                     part.value_entropy_per_weight_nonzero_mean)],
            "packed bytes": part.packed_bytes_mean.round(0).astype(int),
            **({"ONNX bytes (benchmarks.export)": part.onnx_bytes_mean.round(0)}
               if part.onnx_bytes_mean.notna().any() else {}),
            **({"MACs remaining %": part.macs_remaining_pct_mean.round(1),
                "inference speed-up (batch 256)": part.infer_speedup_mean.round(2)}
               if part.infer_speedup_mean.notna().any() else {}),
            **({"collapsed layers (all channels lost)": part.collapsed_layers}
               if part.collapsed_layers.str.len().any() else {}),
        })
        lines += [table.to_markdown(index=False), ""]
    near = pd.concat([near_float(s, points) for points in (1.0, 0.5)], ignore_index=True)
    if not near.empty:
        near = near.sort_values(["method", "model", "within (points)"], ascending=[True, True, False], kind="stable")
        near = near.astype(object).apply(lambda col: [_cell(v, col.name) for v in col])
        lines += ["## Smallest size within 1 and 0.5 points of float (equal-budget control where there is one)", "",
                  "Per method and net, the fewest bits and the fewest weights remaining among grid points whose "
                  "mean accuracy is at least the reference's minus 1 (or 0.5) points: the equal-budget float "
                  "control (the float network trained with the method's own schedule) where the grid has one, "
                  "else the float model. Each point is held to the control of its own seeds; the reference shown is "
                  "that of the point with the fewest bits (the mean over the points where none is within). Sizes "
                  "and accuracies are means over the point's seeds, with the accuracy's std over them.", "",
                  near.to_markdown(index=False), ""]
    for size, label in (("bits_remaining_pct", "bits remaining"), ("coded_bits_pct", "coded bits remaining")):
        pairs = paired(df, size)
        if pairs.empty:
            continue
        lines += [f"## Methods at matched {label}", "",
                  f"Each seed's curve of each method (linear in log {label}, never extrapolated) read at the grid "
                  "points of either method inside the range both cover; both accuracies and `a − b`, taken seed by "
                  "seed, are means over the seeds both have there (std of `a − b`). A difference within two "
                  "standard errors of zero is a tie; under three seeds there is no verdict. `a − b against controls` is the same for each run's "
                  "accuracy minus its equal-budget control's, as mean ± std (seeds): verdict; it differs from `a − b` "
                  "where the two methods trained with different budgets. Rebuilt by `python -m benchmarks.report.figures`.", "",
                  markdown(pairs), ""]
    failed = df[df.status != "ok"]
    if not failed.empty:
        lines += ["## Failed runs", "", failed[["run_id", "method", "params", "seed", "error"]].to_markdown(index=False), ""]
    with replacing(dest / "tables.md") as tmp:
        tmp.write_text("\n".join(lines))
    return df


def near_float(s: pd.DataFrame, points: float = 1.0) -> pd.DataFrame:
    """For every compression method (and variant), the smallest bits and weights remaining (%) whose mean
    accuracy stays within ``points`` of its reference on the same net and data: the mean accuracy of its
    equal-budget control where the grid has one, else the float model's (calibrated alike: ``bn_batches``)."""
    rows = []
    for _, part in s.groupby(["model", "precision", "dataset", "data_fingerprint", "bn_batches"]):
        model = part.model.iloc[0]
        base = part[part.method == "float"]
        if base.empty:
            continue
        plain = float(base.accuracy_mean.iloc[0])
        for method, m in part[~part.method.isin(["float", "float_control"])].groupby("series"):
            ref_each = m.control_accuracy_mean.fillna(plain)
            ok = m[m.accuracy_mean >= ref_each - points]
            bits = ok.loc[ok.bits_remaining_pct_mean.idxmin()] if not ok.empty else None
            weights = ok.loc[ok.weights_remaining_pct_mean.idxmin()] if not ok.empty else None
            controlled = m.control_accuracy_mean.notna().all()
            ref = float(ref_each.mean() if bits is None else ref_each[bits.name])  # points' seeds may differ
            rows.append({"method": method, "model": model, "float accuracy %": plain,
                         "reference": "equal-budget control" if controlled else "float model",
                         "reference accuracy %": ref, "within (points)": points,
                         "fewest bits %": None if bits is None else bits.bits_remaining_pct_mean,
                         "accuracy there %": None if bits is None else bits.accuracy_mean,
                         "accuracy there std": None if bits is None else bits.get("accuracy_std"),
                         "seeds": None if bits is None else bits.get("seeds"),
                         "fewest weights %": None if weights is None else weights.weights_remaining_pct_mean,
                         "accuracy at fewest weights %": None if weights is None else weights.accuracy_mean,
                         "accuracy at fewest weights std": None if weights is None else weights.get("accuracy_std"),
                         "seeds at fewest weights": None if weights is None else weights.get("seeds")})
    return pd.DataFrame(rows)


def _cell(v: object, column: str) -> object:
    """A table cell: a dash where a method has no point close enough (or one seed has no std), counts as
    integers, other numbers to two decimals."""
    if isinstance(v, float):
        return "—" if pd.isna(v) else str(int(v)) if column.startswith("seeds") else f"{v:.2f}"
    return "—" if v is None or v is pd.NA else v


def plus_minus(mean: float, std: float, digits: int) -> str:
    """"mean ± std" to ``digits`` decimals, the mean alone where there is no std (one seed): every table's cell."""
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def varying_params(params: pd.Series) -> list[str]:
    """The parameters that differ between a method's runs (all of them when there is one run), as k=v."""
    dicts = [json.loads(p) for p in params]
    keys = [k for k in dicts[0] if len({json.dumps(d.get(k)) for d in dicts}) > 1] if len(dicts) > 1 else list(dicts[0])
    return [", ".join(f"{k}={d[k]}" for k in keys) for d in dicts]
