"""Results tables rebuilt from the run folders alone (no training code is imported)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from benchmarks.files import replacing
from benchmarks.harness.rundir import read_result
from benchmarks.report.paired import paired
from methods import get_method

log = logging.getLogger(__name__)

#: the training behind each artifact (``result.json``'s ``budget``; empty for runs that predate it)
BUDGET_KEYS = ("float_epochs", "method_epochs", "float_steps", "method_steps", "float_seconds", "method_seconds")
COLUMNS = ["run_id", "method", "series", "knob", "params", "seed", "model", "precision", "dataset", "data_fingerprint", "epochs",
           "accuracy", "accuracy_before_calibration", "bn_batches", "bits_remaining_pct", "weights_remaining_pct",
           "bits", "coded_bits", "coded_bits_pct", "weights_remaining", "weights_total", "unique_values",
           "code_entropy_bits", "value_entropy_per_weight", "value_entropy_per_weight_nonzero",
           "packed_bytes", "onnx_bytes", "macs", "macs_remaining_pct", "infer_speedup", "train_seconds", *BUDGET_KEYS,
           "schedule", "float_digest", "control_accuracy", "vs_control", "collapsed_layers", "status", "error"]
SPEED_KEYS = ("macs", "macs_remaining_pct", "infer_speedup")  # from <out>/speed.csv (benchmarks.timing.speed), CPU rows
SIZE_KEYS = ("bits_remaining_pct", "weights_remaining_pct", "bits", "coded_bits", "coded_bits_pct", "weights_remaining",
             "weights_total", "unique_values", "code_entropy_bits", "value_entropy_per_weight",
             "value_entropy_per_weight_nonzero", "packed_bytes")
# result.json files written before packed format v2 carry the value entropies under their old names (same
# definition). Their ``entropy_bits`` pooled the codes of every bit depth, a different quantity from
# ``code_entropy_bits``, so it is not carried over: that column stays empty for them, as do the coded bits.
OLD_SIZE_NAMES = {"entropy_per_weight": "value_entropy_per_weight",
                  "entropy_per_weight_nonzero": "value_entropy_per_weight_nonzero"}


def collect(out: str | Path) -> pd.DataFrame:
    """One row per run folder with a result that checks out (``rundir.read_result``); a broken one is
    named in a warning and left out."""
    rows = []
    for folder in sorted(p.parent for p in Path(out).glob("runs/*/result.json")):
        r = read_result(folder, deep=False)
        if r is None:
            continue
        spec = r["spec"]
        size = {OLD_SIZE_NAMES.get(k, k): v for k, v in (r.get("size") or {}).items()}
        model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
        budget = r.get("budget") if isinstance(r.get("budget"), dict) else {}
        train = spec.get("train") if isinstance(spec.get("train"), dict) else {}
        rows.append({
            "run_id": r["run_id"], "method": spec["method"], "params": json.dumps(spec["params"], sort_keys=True),
            "seed": spec.get("seed"), "model": f"{model.get('name')}x{model.get('width')}",
            "precision": train.get("precision", "fp32"),
            "dataset": spec.get("dataset"), "data_fingerprint": spec.get("data_fingerprint", ""),
            "epochs": own_epochs(r), "knob": r.get("knob"),
            "accuracy": r.get("accuracy"), "accuracy_before_calibration": r.get("accuracy_before_calibration"),
            "bn_batches": spec.get("bn_batches", 0), "train_seconds": r.get("train_seconds"), "status": r["status"],
            "error": r.get("error", ""),
            "collapsed_layers": " ".join((r.get("method_metrics") or {}).get("collapsed_layers") or []),
            **{k: size.get(k) for k in SIZE_KEYS}, **{k: budget.get(k) for k in BUDGET_KEYS},
            "schedule": budget.get("schedule"), "float_digest": budget.get("float_digest"),
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["series"] = series_names(df)
    df["control_accuracy"] = control_accuracy(df)
    df["vs_control"] = df.accuracy - df.control_accuracy  # seed by seed
    speed = read_speed(out)
    if not speed.empty:
        df = df.drop(columns=list(SPEED_KEYS)).merge(speed, on="run_id", how="left")[COLUMNS]
    onnx = read_onnx(out)
    if not onnx.empty:
        df = df.drop(columns=["onnx_bytes"]).merge(onnx, on="run_id", how="left")[COLUMNS]
    return df.astype({k: float for k in ("accuracy_before_calibration", "coded_bits", "coded_bits_pct", "onnx_bytes",
                                         "code_entropy_bits", *SPEED_KEYS, *BUDGET_KEYS, "control_accuracy",
                                         "vs_control")})


def own_epochs(result: dict) -> int | None:
    """A run's own epochs as trained (its ``budget``: weight fixing's rounds set theirs), else as configured."""
    budget = result.get("budget") if isinstance(result.get("budget"), dict) else {}
    train = (result.get("spec") or {}).get("train")
    return budget.get("method_epochs") or (train.get("epochs") if isinstance(train, dict) else None)


def control_accuracy(df: pd.DataFrame) -> pd.Series:
    """Per compression run, the accuracy of its equal-budget control: the ``float_control`` run with the same
    schedule (``budget.schedule``), seed and data, and the same float model where both recorded which
    (``float_digest``; runs before 2026-11-24 did not). NaN where there is none, where every candidate
    started from another float model, or where the run is a control itself."""
    ok = df[(df.status == "ok") & (df.method == "float_control") & df.schedule.notna()]
    controls = {k: g for k, g in ok.groupby(["schedule", "seed", "data_fingerprint"])}
    out = []
    for key, digest, method in zip(zip(df.schedule, df.seed, df.data_fingerprint), df.float_digest, df.method):
        g = controls.get(key) if method not in ("float", "float_control") else None
        if g is not None and isinstance(digest, str):
            g = g[g.float_digest.isna() | (g.float_digest == digest)]
        out.append(g.accuracy.mean() if g is not None and len(g) else float("nan"))
    return pd.Series(out, index=df.index, dtype=float)


def series_names(df: pd.DataFrame) -> pd.Series:
    """Per run, the curve it belongs to: its method, followed by every parameter that varies between the
    method's runs other than its ``knob`` (γ, λ, δ: recorded with each run), by its epochs where they vary, and
    by its BatchNorm calibration (``bn_batches``) and its training arithmetic (``precision``) where either varies
    among all runs (e.g. ``self_compression cost=bitops``, ``self_compression eps_bits=0.001``). Runs recorded without a knob
    (before 2026-11-24) split on the non-numeric parameters only, numeric ones moving a point along its curve."""
    names = df.method.astype(object).copy()
    # calibrated and uncalibrated runs in one folder: every curve says which it is, so that no pairing of
    # two methods hides that one of them kept its training's BatchNorm statistics
    bn_varies = "bn_batches" in df and df.bn_batches.nunique() > 1
    precision_varies = "precision" in df and df.precision.nunique() > 1
    for method, part in df.groupby("method"):
        dicts = [json.loads(p) for p in part.params]
        knobs = set(part.knob.dropna()) if "knob" in part else set()
        keys = sorted({k for d in dicts for k in d} - knobs)
        vary = [k for k in keys if len({json.dumps(d.get(k)) for d in dicts}) > 1]
        if not knobs:
            vary = [k for k in vary if not all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                                                for d in dicts)]
        epochs = list(part.epochs) if "epochs" in part and part.epochs.nunique() > 1 else None
        bn = list(part.bn_batches) if bn_varies else None
        arithmetic = list(part.precision) if precision_varies else None
        if vary or epochs or bn or arithmetic:
            names[part.index] = [" ".join([method, *(f"{k}={d.get(k)}" for k in vary),
                                           *([f"epochs={epochs[i]:g}"] if epochs else []),
                                           *([f"bn_batches={bn[i]:g}"] if bn else []),
                                           *([f"precision={arithmetic[i]}"] if arithmetic else [])])
                                 for i, d in enumerate(dicts)]
    return names


REFERENCES = ("float", "float_control")  # curves without a knob: the float model and the equal-budget controls


def curve_label(method: str, params: dict, knob: str | None, method_params: pd.Series) -> str:
    """How a curve is named wherever it is shown: ``method`` where ``params`` are its defaults in every
    parameter that varies among the method's runs (the knob aside), else ``method (k=v, ...)`` with the
    parameters in which it differs from them; a control by the method whose schedule it copies. A method
    that is not installed here is named by every parameter that varies."""
    if method in REFERENCES:
        return f"{method} (like={params['like']})" if "like" in params else method
    others = [json.loads(p) for p in method_params]
    vary = sorted(k for k in params if k != knob and len({json.dumps(o.get(k)) for o in others}) > 1)
    try:
        defaults = get_method(method).Config().__dict__
    except Exception:  # a plugin's runs read where the plugin is not installed
        defaults = {}
    changed = [f"{k}={params[k]}" for k in vary if k not in defaults or defaults[k] != params[k]]
    return f"{method} ({', '.join(changed)})" if changed else method


def curve_labels(df: pd.DataFrame) -> dict[str, str]:
    """``curve_label`` of every series of a run table (``collect``), keyed by series."""
    labels = {}
    for series, part in df.groupby("series"):
        first = part.iloc[0]
        knob = first.knob if isinstance(first.get("knob"), str) else None
        labels[series] = curve_label(first.method, json.loads(first.params), knob,
                                     df[df.method == first.method].params)
    return labels


def read_speed(out: str | Path) -> pd.DataFrame:
    """``run_id`` and the measured inference columns of ``<out>/speed.csv`` (its CPU rows, else its first
    device's); empty when there is none or it does not parse (then one warning says so)."""
    f = Path(out) / "speed.csv"
    if not f.is_file():
        return pd.DataFrame()
    try:
        speed = pd.read_csv(f)
        device = "cpu" if (speed.device == "cpu").any() else speed.device.iloc[0]
        return speed[speed.device == device][["run_id", *SPEED_KEYS]].drop_duplicates("run_id")
    except (OSError, ValueError, KeyError, AttributeError, IndexError) as e:
        log.warning("%s does not parse (%s); measured speed left out, rerun python -m benchmarks.timing.speed", f, e)
        return pd.DataFrame()


def read_onnx(out: str | Path) -> pd.DataFrame:
    """``run_id`` and ``onnx_bytes`` of ``<out>/onnx.csv`` (``benchmarks.export``); empty when there is none or
    it does not parse (then one warning says so)."""
    f = Path(out) / "onnx.csv"
    if not f.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(f)[["run_id", "onnx_bytes"]].drop_duplicates("run_id")
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s does not parse (%s); ONNX sizes left out, rerun python -m benchmarks.export", f, e)
        return pd.DataFrame()


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (method, params, model, dataset, schedule), finished runs only."""
    ok = df[df.status == "ok"].fillna({"data_fingerprint": ""})
    ok = ok if "precision" in ok else ok.assign(precision="fp32")  # a hand-built frame without the column
    ok = ok if "onnx_bytes" in ok else ok.assign(onnx_bytes=float("nan"))
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


def write_tables(out: str | Path, dest: str | Path | None = None) -> pd.DataFrame:
    """``results.csv`` and ``tables.md`` of the runs in ``out``, written into ``dest`` (default ``out``)."""
    out = Path(out)
    dest = Path(dest) if dest is not None else out
    df = collect(out)
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
            "accuracy %": [_pm(m, v, 2) for m, v in zip(part.accuracy_mean, part.accuracy_std)],
            **({"before BN calibration %": ["—" if pd.isna(m) else _pm(m, v, 2) for m, v in
                                            zip(part.accuracy_before_calibration_mean,
                                                part.accuracy_before_calibration_std)]}
               if part.accuracy_before_calibration_mean.notna().any() else {}),
            **({"equal-budget control %": [_pm(m, v, 2) for m, v in zip(part.control_accuracy_mean,
                                                                          part.control_accuracy_std)],
                "vs control (points)": [_pm(m, v, 2) for m, v in zip(part.vs_control_mean, part.vs_control_std)]}
               if part.control_accuracy_mean.notna().any() else {}),
            **({"budget epochs (float + own)": [f"{a:.0f} + {b:.0f}" for a, b in zip(part.float_epochs_mean,
                                                                                   part.method_epochs_mean)]}
               if part.method_epochs_mean.notna().all() else {}),
            "bits remaining %": [_pm(m, v, 3) for m, v in zip(part.bits_remaining_pct_mean, part.bits_remaining_pct_std)],
            "coded bits remaining %": ["—" if pd.isna(m) else _pm(m, v, 3)
                                       for m, v in zip(part.coded_bits_pct_mean, part.coded_bits_pct_std)],
            "weights remaining %": [_pm(m, v, 2) for m, v in zip(part.weights_remaining_pct_mean,
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
                  "else the float model. Sizes and accuracies are means over the point's seeds, with the "
                  "accuracy's std over them.", "",
                  near.to_markdown(index=False), ""]
    for size, label in (("bits_remaining_pct", "bits remaining"), ("coded_bits_pct", "coded bits remaining")):
        pairs = paired(df, size)
        if pairs.empty:
            continue
        lines += [f"## Methods at matched {label}", "",
                  f"Each method's accuracy read off its own curve (linear in log {label}, never extrapolated) at the "
                  "grid points of either method inside the range both cover; `a − b` is taken seed by seed and given "
                  "as mean and std over the seeds both have. A difference within two standard errors of zero is a "
                  "tie. `a − b against controls` is the same for each run's accuracy minus its equal-budget "
                  "control's, as mean ± std (seeds): verdict; it differs from `a − b` where the two methods trained "
                  "with different budgets. Rebuilt by `python -m benchmarks.report.figures`.", "",
                  pairs.to_markdown(index=False, floatfmt=".2f"), ""]
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
    s = s if "bn_batches" in s else s.assign(bn_batches=0)  # a summary of runs that predate calibration
    s = s if "precision" in s else s.assign(precision="fp32")
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
            ref = float(ref_each.mean())
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


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def varying_params(params: pd.Series) -> list[str]:
    """The parameters that differ between a method's runs (all of them when there is one run), as k=v."""
    dicts = [json.loads(p) for p in params]
    keys = [k for k in dicts[0] if len({json.dumps(d.get(k)) for d in dicts}) > 1] if len(dicts) > 1 else list(dicts[0])
    return [", ".join(f"{k}={d[k]}" for k in keys) for d in dicts]
