"""One read of a results folder: every run's result and history, and the run table every report is built from.

``load(out)`` reads each ``<out>/runs/<id>/result.json`` once, through ``rundir.read_result`` with the grid's
own checks: a run whose result does not check out, or whose ``model.packed`` is not the file it recorded (or
fails the packed reader's checks) or whose ``history.jsonl`` does not parse, is named in one warning and left
out, so a table never shows a size that its file no longer backs. A finished run's history is read into a
table the first time a figure asks for it (``Runs.history``: most reports never do). From the results it
builds the run table (one row per run: ``COLUMNS``), with each run's curve (``series``) and its equal-budget
control's accuracy. ``tables.py``, ``figures.py``, ``paired.py``, ``compare.py``, ``scale.py``, ``headline.py`` and the
experiments' tables all start from it, so a folder is never read twice and a curve is named by one rule:
``series_names`` keys it, ``curve_label`` shows it.

No training code is imported here.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmarks.files import read_history
from benchmarks.harness.rundir import read_result
from methods import get_method

log = logging.getLogger(__name__)

#: the training behind each artifact (``result.json``'s ``budget``)
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
REFERENCES = ("float", "float_control")  # curves without a knob: the float model and the equal-budget controls


@dataclass(frozen=True)
class Runs:
    """Every run of one results folder that checks out, read once."""
    out: Path
    results: dict[str, dict]  # run id -> its checked result.json (finished and failed), in folder order
    table: pd.DataFrame  # one row per run (``COLUMNS``)
    _histories: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def finished(self, method: str) -> list[dict]:
        """The finished results of ``method``, in folder order."""
        return [r for r in self.results.values() if r["status"] == "ok" and r["spec"]["method"] == method]

    def history(self, run_id: str) -> pd.DataFrame:
        """The per-epoch history of a run, read on first use (a torn line is named in a warning and skipped)."""
        if run_id not in self._histories:
            self._histories[run_id] = pd.DataFrame(read_history(self.out / "runs" / run_id / "history.jsonl"))
        return self._histories[run_id]


def load(out: str | Path) -> Runs:
    """Read the results folder ``out`` once (its runs' results; histories on demand)."""
    out = Path(out)
    results = {}
    for folder in sorted(p.parent for p in out.glob("runs/*/result.json")):
        r = read_result(folder)
        if r is not None:
            results[folder.name] = r
    return Runs(out, results, run_table(list(results.values()), out))


def model_name(spec: dict) -> str:
    """A run's network as the tables show it (``resnet9x0.25``)."""
    return f"{spec['model']['name']}x{spec['model']['width']}"


def run_table(results: list[dict], out: Path | None = None) -> pd.DataFrame:
    """One row per result, with its curve, its control's accuracy and (from ``out``'s ``speed.csv`` and
    ``onnx.csv``, where present) its measured inference speed and ONNX size."""
    rows = []
    for r in results:
        spec, size, budget = r["spec"], r.get("size") or {}, r.get("budget") or {}
        rows.append({
            "run_id": r["run_id"], "method": spec["method"], "params": json.dumps(spec["params"], sort_keys=True),
            "seed": spec["seed"], "model": model_name(spec), "precision": spec["train"]["precision"],
            "dataset": spec["dataset"], "data_fingerprint": spec["data_fingerprint"],
            "epochs": own_epochs(r), "knob": r.get("knob"),
            "accuracy": r.get("accuracy"), "accuracy_before_calibration": r.get("accuracy_before_calibration"),
            # a spec omits bn_batches when it is 0 (so runs from before calibration kept their ids)
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
    for extra, keys in ((read_speed(out), list(SPEED_KEYS)), (read_onnx(out), ["onnx_bytes"])) if out else ():
        if not extra.empty:
            df = df.drop(columns=keys).merge(extra, on="run_id", how="left")[COLUMNS]
    return df.astype({k: float for k in ("accuracy_before_calibration", "coded_bits", "coded_bits_pct", "onnx_bytes",
                                         "code_entropy_bits", *SPEED_KEYS, *BUDGET_KEYS, "control_accuracy",
                                         "vs_control")})


def own_epochs(result: dict) -> int:
    """A run's own epochs as trained (its ``budget``: weight fixing's rounds set theirs); as configured for a
    failed run and for the float model, whose budget counts its training as float epochs."""
    trained = result["budget"]["method_epochs"] if result["status"] == "ok" else 0
    return trained or result["spec"]["train"]["epochs"]


def control_accuracy(df: pd.DataFrame) -> pd.Series:
    """Per compression run, the accuracy of its equal-budget control: the ``float_control`` run of the same
    network and training arithmetic with the same schedule (``budget.schedule``), seed and data, and the same
    float model where both recorded which (``float_digest``: null where it was not recorded). NaN where there
    is none, where every candidate started from another float model, or where the run is a control itself.
    The network is part of the key because a schedule names epochs and learning rates, not the net: a width
    whose control has not trained yet must get none, not another width's."""
    key = ["model", "precision", "schedule", "seed", "data_fingerprint"]
    ok = df[(df.status == "ok") & (df.method == "float_control") & df.schedule.notna()]
    controls = {k: g for k, g in ok.groupby(key)}
    out = []
    for k, digest, method in zip(df[key].itertuples(index=False, name=None), df.float_digest, df.method):
        g = controls.get(k) if method not in REFERENCES else None
        if g is not None and isinstance(digest, str):
            g = g[g.float_digest.isna() | (g.float_digest == digest)]
        out.append(g.accuracy.mean() if g is not None and len(g) else float("nan"))
    return pd.Series(out, index=df.index, dtype=float)


def series_names(df: pd.DataFrame) -> pd.Series:
    """Per run, the curve it belongs to: its method, followed by every parameter that varies between the
    method's runs other than its ``knob`` (γ, λ, δ: recorded with each run), by its epochs where they vary, and
    by its BatchNorm calibration (``bn_batches``) and its training arithmetic (``precision``) where either varies
    among all runs (e.g. ``self_compression cost=bitops``, ``self_compression eps_bits=0.001``)."""
    names = df.method.astype(object).copy()
    # calibrated and uncalibrated runs in one folder: every curve says which it is, so that no pairing of
    # two methods hides that one of them kept its training's BatchNorm statistics
    bn_varies = df.bn_batches.nunique() > 1
    precision_varies = df.precision.nunique() > 1
    for method, part in df.groupby("method"):
        dicts = [json.loads(p) for p in part.params]
        knobs = set(part.knob.dropna())
        keys = sorted({k for d in dicts for k in d} - knobs)
        vary = [k for k in keys if len({json.dumps(d.get(k)) for d in dicts}) > 1]
        epochs = list(part.epochs) if part.epochs.nunique() > 1 else None
        bn = list(part.bn_batches) if bn_varies else None
        arithmetic = list(part.precision) if precision_varies else None
        if vary or epochs or bn or arithmetic:
            names[part.index] = [" ".join([method, *(f"{k}={d.get(k)}" for k in vary),
                                           *([f"epochs={epochs[i]:g}"] if epochs else []),
                                           *([f"bn_batches={bn[i]:g}"] if bn else []),
                                           *([f"precision={arithmetic[i]}"] if arithmetic else [])])
                                 for i, d in enumerate(dicts)]
    return names


def curve_label(method: str, params: dict, knob: str | None, method_params: pd.Series,
                extras: Sequence[str] = ()) -> str:
    """How a curve is named wherever it is shown: ``method`` where ``params`` are its defaults in every
    parameter that varies among the method's runs (the knob aside), else ``method (k=v, ...)`` with the
    parameters in which it differs from them; a control by the method whose schedule it copies and what else
    varies among the controls. ``extras`` (``curve_labels``: epochs, calibration, arithmetic where they vary)
    join the parentheses. A method that is not installed here is named by every parameter that varies."""
    others = [json.loads(p) for p in method_params]
    vary = sorted(k for k in params if k != knob and len({json.dumps(o.get(k)) for o in others}) > 1)
    if method in REFERENCES:
        inside = [f"like={params['like']}"] if "like" in params else []
        inside += [f"{k}={params[k]}" for k in vary if k != "like"]
    else:
        try:
            defaults = get_method(method).Config().__dict__
        except Exception:  # a plugin's runs read where the plugin is not installed
            defaults = {}
        inside = [f"{k}={params[k]}" for k in vary if k not in defaults or defaults[k] != params[k]]
    inside += extras
    return f"{method} ({', '.join(inside)})" if inside else method


def curve_labels(df: pd.DataFrame) -> dict[str, str]:
    """``curve_label`` of every series of a run table, keyed by series, with what else ``series_names`` tells
    curves apart by: the epochs where they vary among the method's runs, the calibration and the arithmetic
    where they vary among all runs (so that no two curves of a legend share a label)."""
    labels = {}
    for series, part in df.groupby("series"):
        first = part.iloc[0]
        knob = first.knob if isinstance(first.knob, str) else None
        mine = df[df.method == first.method]
        extras = [*([f"{first.epochs:g} epochs"] if mine.epochs.nunique() > 1 else []),
                  *([f"bn_batches={first.bn_batches:g}"] if df.bn_batches.nunique() > 1 else []),
                  *([str(first.precision)] if df.precision.nunique() > 1 else [])]
        labels[series] = curve_label(first.method, json.loads(first.params), knob, mine.params, extras)
    return labels


def read_speed(out: Path) -> pd.DataFrame:
    """``run_id`` and the measured inference columns of ``<out>/speed.csv`` (its CPU rows, else its first
    device's); empty when there is none or it does not parse (then one warning says so)."""
    f = out / "speed.csv"
    if not f.is_file():
        return pd.DataFrame()
    try:
        speed = pd.read_csv(f)
        device = "cpu" if (speed.device == "cpu").any() else speed.device.iloc[0]
        return speed[speed.device == device][["run_id", *SPEED_KEYS]].drop_duplicates("run_id")
    except (OSError, ValueError, KeyError, AttributeError, IndexError) as e:
        log.warning("%s does not parse (%s); measured speed left out, rerun python -m benchmarks.timing.speed", f, e)
        return pd.DataFrame()


def read_onnx(out: Path) -> pd.DataFrame:
    """``run_id`` and ``onnx_bytes`` of ``<out>/onnx.csv`` (``benchmarks.export``); empty when there is none or
    it does not parse (then one warning says so)."""
    f = out / "onnx.csv"
    if not f.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(f)[["run_id", "onnx_bytes"]].drop_duplicates("run_id")
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s does not parse (%s); ONNX sizes left out, rerun python -m benchmarks.export", f, e)
        return pd.DataFrame()
