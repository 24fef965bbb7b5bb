"""Runs as folders: one grid point = one ``<out>/runs/<id>/``, its id a hash of what changes its results
(the method's full config, seed, net, schedules and the content of the data set).

Each folder holds ``config.json``, ``history.jsonl`` (one line per epoch), ``model.packed`` and
``result.json``, each written atomically. A finished run is never redone; a failed one is recorded with its
reason and the grid goes on; a folder whose files do not check out (``benchmarks.harness.rundir``) is redone,
and a requested rerun trains beside the old result, which it replaces only once complete. Whoever
trains a run holds its lock, so grids sharing an output folder never train one run twice. ``execute`` is
the seam for other executors: it needs only a ``RunSpec`` and an output folder, so Ray or SLURM can run the
same specs and the reports read the same folders.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.accounting.size import size_report
from benchmarks.compressed import CompressedModel
from benchmarks.data import DataError, Dataset, load_dataset
from benchmarks.device import host, pick_device
from benchmarks.harness.calibration import pack_and_score
from benchmarks.files import append_history, write_history, write_json
from benchmarks.harness import rundir
from benchmarks.harness.rundir import RESULT_SCHEMA, finished, read_result
from benchmarks.models import ModelSpec, build_model
from benchmarks.timing.steps import float_step_seconds
from benchmarks.checkpoints import StaleCheckpoint, resume_history
from benchmarks.float_cache import float_model
from benchmarks.train import TrainConfig, seed_everything, steps_per_epoch, train
from methods import UnknownMethodError, get_method
from methods.registry import MethodNameConflict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    method: str
    params: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs of the method's config
    seed: int
    dataset: str
    data_fingerprint: str  # content hash of the data set the run trains on (``Dataset.fingerprint``)
    model: ModelSpec
    train: TrainConfig  # the method's own schedule (seed inside equals ``seed``)
    float_train: TrainConfig  # the float model's schedule, for methods that start from it
    # training batches over which the artifact's BatchNorm statistics are re-estimated before it is packed
    # and scored (``benchmarks.harness.calibration``); 0: the statistics training left
    bn_batches: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        if not self.bn_batches:  # runs from before calibration existed keep their ids
            del d["bn_batches"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        """The spec ``as_dict`` wrote (a ``result.json``'s ``spec``); TypeError/KeyError if it does not fit."""
        return cls(d["method"], tuple(sorted(d["params"].items())), d["seed"], d["dataset"], d["data_fingerprint"],
                   ModelSpec(**d["model"]), TrainConfig(**d["train"]), TrainConfig(**d["float_train"]),
                   d.get("bn_batches", 0))

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


EXECUTOR_ENV = "SCNN_EXECUTOR"  # set by whoever runs ``execute`` elsewhere than in run_all's own process


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Library versions, the code's commit, ``host`` (where the run was made) and the executor that ran it
    (``local``, ``local --jobs``, ``ray``, ``slurm``)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import numpy, pandas
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "platform": platform.platform(), "git_commit": commit or "unknown",
            "host": host(device), "executor": os.environ.get(EXECUTOR_ENV, "local")}


def execute(spec: RunSpec, out: str | os.PathLike, data_dir: str | None = None, device: str | None = None,
            data: Dataset | None = None, progress: bool = True, wait: bool = True) -> dict:
    """Run one grid point into ``<out>/runs/<id>/`` unless it already finished; returns its result.

    When another process holds the run (a second grid on the same folder), wait for it, or with
    ``wait=False`` return ``{"status": "busy"}`` at once so the caller can come back to it later."""
    folder = Path(out) / "runs" / spec.run_id
    folder.mkdir(parents=True, exist_ok=True)
    with rundir.held(folder, wait) as mine:
        if not mine:
            log.info("run %s is being trained by another process; coming back to it later", spec.run_id)
            return {"status": "busy", "run_id": spec.run_id}
        rundir.roll_forward(folder)  # a rerun whose move an interruption cut short
        rundir.remove_leftovers(folder)
        done = finished(folder)  # checked under the lock: another grid may just have finished it
        if done is not None:
            return done
        if (folder / rundir.RERUN_REQUEST).exists() and read_result(folder, warn=False) is not None:
            # train beside the old result, which stays in place until the new one is complete
            result = _execute_locked(spec, out, rundir.staging(folder), data_dir, device, data, progress)
            if result["status"] == "ok":
                rundir.complete_rerun(folder)
            return result
        (folder / rundir.RERUN_REQUEST).unlink(missing_ok=True)  # nothing to keep: trained in place
        (folder / "model.onnx").unlink(missing_ok=True)  # exported from a model this run no longer has
        return _execute_locked(spec, out, folder, data_dir, device, data, progress)


def _execute_locked(spec: RunSpec, out: str | os.PathLike, folder: Path, data_dir: str | None, device: str | None,
                    data: Dataset | None, progress: bool) -> dict:
    dev = pick_device(device)
    env = environment(dev)
    write_json(folder / "config.json", {"run_id": spec.run_id, **spec.as_dict(), "device": str(dev),
                                         "environment": env})
    log.info("run %s: training %s %s, seed %d", spec.run_id, spec.method, dict(spec.params), spec.seed)
    t0 = time.perf_counter()
    try:
        data = data if data is not None else load_dataset(spec.dataset, data_dir, dev)
        if data.fingerprint != spec.data_fingerprint:
            raise DataError(f"the data set loaded (fingerprint {data.fingerprint}) is not the one this run was "
                            f"planned for ({spec.data_fingerprint}); pass the same --data-dir as the grid")
        try:
            result = _train_and_measure(spec, folder, data, Path(out) / "cache", progress)
        except StaleCheckpoint:  # the checkpoint was removed: the run starts afresh
            result = _train_and_measure(spec, folder, data, Path(out) / "cache", progress)
        result["status"] = "ok"
    except Exception as e:  # recorded, never fatal to the grid
        return record_failure(spec, out, f"{type(e).__name__}: {e}", traceback.format_exc(), env,
                              time.perf_counter() - t0, folder)
    result.update(schema=RESULT_SCHEMA, run_id=spec.run_id, wall_seconds=time.perf_counter() - t0,
                  spec=spec.as_dict(), environment=env)
    write_json(folder / "result.json", result)
    return result


def record_failure(spec: RunSpec, out: str | os.PathLike, error: str, trace: str = "",
                   env: dict[str, str] | None = None, wall_seconds: float = 0.0, folder: Path | None = None) -> dict:
    """Write a failed run's ``result.json`` into ``folder`` (default: the run's own; a rerun's staging folder,
    so that a failed rerun leaves the old result in place). The grid goes on; the next invocation retries it."""
    log.error("run %s (%s %s) failed: %s", spec.run_id, spec.method, dict(spec.params), error)
    folder = folder if folder is not None else Path(out) / "runs" / spec.run_id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        knob = get_method(spec.method).knob  # so that its curve is named like its finished runs'
    except (UnknownMethodError, MethodNameConflict):  # the method cannot be loaded: what it failed on
        knob = None
    result = {"schema": RESULT_SCHEMA, "status": "failed", "error": error, "traceback": trace, "run_id": spec.run_id,
              "knob": knob, "wall_seconds": wall_seconds, "spec": spec.as_dict(), "environment": env or environment()}
    write_json(folder / "result.json", result)
    return result


def budget(spec: RunSpec, method: Any, n_train: int, float_seconds: float, method_seconds: float,
           float_digest: str | None = None) -> dict:
    """The training behind a run's artifact: epochs, optimizer steps and seconds of the float pre-training
    it starts from and of its own training; ``schedule``, a hash of that training's shape (phases,
    optimizer settings, float schedule, net and data; not the seed and not the method's own extra
    parameters) under which the reports pair a method with its equal-budget ``float_control``; and
    ``float_digest``, which float model it started from (``train.state_digest``; None from scratch)."""
    phases = method.phases(spec.train.epochs)
    pre = method.needs_float_model
    key = [[asdict(p) for p in phases], asdict(replace(spec.train, seed=0)) if phases else None,
           asdict(replace(spec.float_train, seed=0)) if pre else None, spec.model.as_dict(), spec.data_fingerprint]
    if spec.bn_batches:  # a calibrated run pairs with a calibrated control only
        key.append({"bn_batches": spec.bn_batches})
    own = sum(p.epochs for p in phases)
    return {"float_epochs": spec.float_train.epochs if pre else 0, "method_epochs": own,
            "float_steps": spec.float_train.epochs * steps_per_epoch(n_train, spec.float_train.batch_size) if pre else 0,
            "method_steps": own * steps_per_epoch(n_train, spec.train.batch_size),
            "float_seconds": float_seconds, "method_seconds": method_seconds,
            "schedule": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12],
            "float_digest": float_digest if pre else None}


def _export(method, model: torch.nn.Module, spec: ModelSpec) -> CompressedModel:
    """The method's exported form, which every size is measured from; anything else is a plugin's bug, named."""
    cm = method.export(model, spec)
    if not isinstance(cm, CompressedModel):
        raise TypeError(f"{method.name}.export() returned {type(cm).__name__}, not a CompressedModel: build it with "
                        f"methods.api.export_layers (docs/plugins.md)")
    return cm


def _train_and_measure(spec: RunSpec, folder: Path, data: Dataset, cache: Path, progress: bool) -> dict:
    method = get_method(spec.method).from_params(**dict(spec.params))
    float_seconds, float_digest = 0.0, None
    checkpoint = folder / "checkpoint.pt"  # an interrupted run resumes after its last finished epoch
    _, elapsed = resume_history(folder / "history.jsonl", checkpoint)
    if method.needs_float_model:
        model, meta = float_model(spec.model, data, spec.float_train, cache, progress)
        float_seconds, float_digest = meta["train_seconds"], meta["digest"]
        if not method.phases(spec.train.epochs):  # the float baseline: its history is the float training
            write_history(folder / "history.jsonl", meta["history"])
    else:
        seed_everything(spec.seed)
        model = build_model(spec.model).to(data.train.images.device)
    # what a float step of this net costs here and now: the yardstick of this run's epoch times
    float_step = float_step_seconds(spec.model, spec.train, data.train.images.device) if method.phases(1) else None
    model = method.prepare(model)

    def on_epoch(record: dict) -> None:
        if float_step:  # what this epoch's steps cost against a float step of the same net, timed here
            record["epoch_time_vs_float"] = record["epoch_seconds"] / record["steps"] / float_step
        rep = size_report(_export(method, model, spec.model))  # measured by the harness, per epoch
        record.update(bits_remaining_pct=rep.bits_remaining_pct, weights_remaining_pct=rep.weights_remaining_pct,
                      unique_values=rep.unique_values, value_entropy_per_weight=rep.value_entropy_per_weight)
        append_history(folder / "history.jsonl", record)

    t0 = time.perf_counter()
    train(method, model, data, spec.train, on_epoch=on_epoch, progress=progress, checkpoint=checkpoint)
    method_seconds = time.perf_counter() - t0 + elapsed
    scored = pack_and_score(_export(method, model, spec.model), folder / "model.packed", data, spec.bn_batches,
                            spec.train.batch_size, spec.seed)
    result = {**scored, "train_seconds": method_seconds + float_seconds,
              "budget": budget(spec, method, len(data.train), float_seconds, method_seconds, float_digest),
              "knob": method.knob,  # which parameter moves a run along its curve (the reports' series)
              "method_metrics": method.epoch_metrics(model)}
    checkpoint.unlink(missing_ok=True)
    return result
