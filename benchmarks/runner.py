"""Runs as folders: one grid point = one ``<out>/runs/<id>/``, its id a hash of what changes its results.

Each folder holds ``config.json``, ``history.jsonl`` (one line per epoch), ``model.packed`` and
``result.json``, each written atomically. A finished run is never redone; a failed one is recorded with its
reason and the grid goes on. ``execute`` is the seam for other executors: it needs only a ``RunSpec`` and
an output folder, so Ray or SLURM can run the same specs and the reports read the same folders.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import packing
from benchmarks.compressed import to_module
from benchmarks.data import Dataset, load_dataset
from benchmarks.models import ModelSpec, build_model
from benchmarks.size import size_report
from benchmarks.train import (TrainConfig, evaluate, float_model, pick_device, resume_history, seed_everything,
                              train)
from methods import get_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    method: str
    params: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs of the method's config
    seed: int
    dataset: str
    model: ModelSpec
    train: TrainConfig  # the method's own schedule (seed inside equals ``seed``)
    float_train: TrainConfig  # the float model's schedule, for methods that start from it

    def as_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def environment() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import numpy, pandas
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "platform": platform.platform(), "git_commit": commit or "unknown"}


def run_status(folder: Path) -> str | None:
    f = folder / "result.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def execute(spec: RunSpec, out: str | os.PathLike, data_dir: str | None = None, device: str | None = None,
            data: Dataset | None = None, progress: bool = True) -> dict:
    """Run one grid point into ``<out>/runs/<id>/`` unless it already finished; returns its result."""
    folder = Path(out) / "runs" / spec.run_id
    if run_status(folder) == "ok":
        return json.loads((folder / "result.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    env = environment()
    write_json(folder / "config.json", {"run_id": spec.run_id, **spec.as_dict(), "device": str(dev),
                                         "environment": env})
    t0 = time.perf_counter()
    try:
        data = data if data is not None else load_dataset(spec.dataset, data_dir, dev)
        result = _train_and_measure(spec, folder, data, Path(out) / "cache", progress)
        result["status"] = "ok"
    except Exception as e:  # recorded, never fatal to the grid
        return record_failure(spec, out, f"{type(e).__name__}: {e}", traceback.format_exc(), env,
                              time.perf_counter() - t0)
    result.update(run_id=spec.run_id, wall_seconds=time.perf_counter() - t0, spec=spec.as_dict(),
                  environment=env)
    write_json(folder / "result.json", result)
    return result


def record_failure(spec: RunSpec, out: str | os.PathLike, error: str, trace: str = "",
                   env: dict[str, str] | None = None, wall_seconds: float = 0.0) -> dict:
    """Write a failed run's ``result.json`` (the grid goes on; the next invocation retries it)."""
    log.error("run %s (%s %s) failed: %s", spec.run_id, spec.method, dict(spec.params), error)
    folder = Path(out) / "runs" / spec.run_id
    folder.mkdir(parents=True, exist_ok=True)
    result = {"status": "failed", "error": error, "traceback": trace, "run_id": spec.run_id,
              "wall_seconds": wall_seconds, "spec": spec.as_dict(), "environment": env or environment()}
    write_json(folder / "result.json", result)
    return result


def _train_and_measure(spec: RunSpec, folder: Path, data: Dataset, cache: Path, progress: bool) -> dict:
    method = get_method(spec.method).from_params(**dict(spec.params))
    float_seconds = 0.0
    checkpoint = folder / "checkpoint.pt"  # an interrupted run resumes after its last finished epoch
    _, elapsed = resume_history(folder / "history.jsonl", checkpoint)
    if method.needs_float_model:
        model, meta = float_model(spec.model, data, spec.float_train, cache, progress)
        float_seconds = meta["train_seconds"]
        if not method.phases(spec.train.epochs):  # the float baseline: its history is the float training
            (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta["history"]))
    else:
        seed_everything(spec.seed)
        model = build_model(spec.model).to(data.train.images.device)
    model = method.prepare(model)

    def on_epoch(record: dict) -> None:
        rep = size_report(method.export(model, spec.model))  # measured by the harness, per epoch
        record.update(bits_remaining_pct=rep.bits_remaining_pct, weights_remaining_pct=rep.weights_remaining_pct,
                      unique_values=rep.unique_values, value_entropy_per_weight=rep.value_entropy_per_weight)
        with open(folder / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    t0 = time.perf_counter()
    train(method, model, data, spec.train, on_epoch=on_epoch, progress=progress, checkpoint=checkpoint)
    train_seconds = time.perf_counter() - t0 + elapsed + float_seconds
    packing.save(method.export(model, spec.model), folder / "model.packed")
    artifact, layout = packing.read_file(folder / "model.packed")  # score what was written, not what is in memory
    decoded = to_module(artifact).to(data.train.images.device)
    report = size_report(artifact, layout)
    result = {"accuracy": evaluate(decoded, data.test), "size": report.as_dict(), "train_seconds": train_seconds,
              "method_metrics": method.epoch_metrics(model)}
    checkpoint.unlink(missing_ok=True)
    return result
