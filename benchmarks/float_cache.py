"""The float-model cache: each float model (net, data content, schedule with its seed) is trained once, under a
lock, and read by every run that starts from it; retraining one is explicit and replaces it only once done."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from benchmarks.checkpoints import StaleCheckpoint, brief, resume_history, write_torch
from benchmarks.data import Dataset
from benchmarks.files import append_history
from benchmarks.models import ModelSpec, build_model
from benchmarks.train import TrainConfig, seed_everything, train
from methods.base import Method

log = logging.getLogger(__name__)


def float_cache_path(cache_dir: str | os.PathLike, spec: ModelSpec, data_fingerprint: str, cfg: TrainConfig) -> Path:
    """Where the float model of (net, data content, schedule with its seed) is cached."""
    key = hashlib.sha256(json.dumps([spec.as_dict(), data_fingerprint, asdict(cfg)], sort_keys=True).encode())
    return Path(cache_dir) / f"float-{key.hexdigest()[:16]}.pt"


def state_digest(model: nn.Module) -> str:
    """A content hash (16 hex digits) of a network's parameters and buffers, BatchNorm's batch counters aside:
    which float model a run started from. Runs record it because a lost cache entry trained again under the
    same seed on another CPU gives different weights (seed 2 of the `cpu` net: 86.97% against 87.31%)."""
    return _digest(model.state_dict())


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        if not name.endswith("num_batches_tracked"):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def request_float_retraining(path: Path) -> None:
    """Mark the cached float model at ``path`` to be trained again by the next ``float_model`` call (``run_all.py
    --retrain-float``); the cached one stays in use until the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        path.with_suffix(".retrain").touch()


def float_digest(path: Path) -> str | None:
    """``state_digest`` of the cached float model at ``path`` (None when it does not load): which runs
    started from it (``result.json``'s ``budget.float_digest``)."""
    try:
        return _digest(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    except Exception:  # unreadable: nothing can have started from it as it is
        return None


def float_model(spec: ModelSpec, data: Dataset, cfg: TrainConfig, cache_dir: str | os.PathLike,
                progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The trained float model for (model, data content, schedule, seed), trained once and then read from
    the cache. Returns the model (on the data's device) and the cache entry's metadata (history, time, and
    ``digest``: ``state_digest`` of the model, computed from the weights, not read from the file).

    The entry is trained under a file lock, so concurrent grids wait for one another instead of training
    it twice; an unreadable entry is named in one warning and trained again. An entry marked for retraining
    (``request_float_retraining``) is trained again and replaces the old one only once complete: an
    interrupted retraining leaves the old entry in use and resumes next time it is asked for."""
    path = float_cache_path(cache_dir, spec, data.fingerprint, cfg)
    device = data.train.images.device
    retrain = path.with_suffix(".retrain")

    def fresh() -> nn.Module:  # the seeded initial model; rebuilt when a cache entry or checkpoint fails
        seed_everything(cfg.seed)
        return build_model(spec).to(device)

    model = fresh()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        if path.is_file() and not retrain.exists():
            try:
                blob = torch.load(path, map_location=device, weights_only=True)
                model.load_state_dict(blob["state_dict"])
                return model, {**blob["meta"], "digest": state_digest(model)}
            except Exception as e:  # torn, foreign, or written for another net
                log.warning("float-model cache %s is unreadable (%s); training it again", path, brief(e))
                path.unlink()
                model = fresh()
        ckpt, hist = path.with_suffix(".ckpt"), path.with_suffix(".history.jsonl")
        history, elapsed = resume_history(hist, ckpt)

        def on_epoch(record: dict) -> None:
            history.append(record)
            append_history(hist, record)

        t0 = time.perf_counter()
        try:
            train(Method(), model, data, cfg, on_epoch=on_epoch, progress=progress, checkpoint=ckpt)
        except StaleCheckpoint:  # removed: train the entry from the start
            history, elapsed = resume_history(hist, ckpt)
            model = fresh()
            train(Method(), model, data, cfg, on_epoch=on_epoch, progress=progress, checkpoint=ckpt)
        meta = {"history": history, "train_seconds": elapsed + time.perf_counter() - t0, "key": path.stem}
        write_torch(path, {"state_dict": model.state_dict(), "meta": meta})
        ckpt.unlink(missing_ok=True)
        hist.unlink(missing_ok=True)
        retrain.unlink(missing_ok=True)
    return model, {**meta, "digest": state_digest(model)}
