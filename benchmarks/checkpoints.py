"""Checkpoints of the one training loop: everything that decides the rest of a run, written after every epoch
and read back only as plain data, so that an interrupted run resumes as if it had never stopped and no file on
disk can execute code."""
from __future__ import annotations

import io
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.files import RunFileError, read_history, replacing, write_history
from benchmarks.topology import fit_shapes_
from methods.base import Method

log = logging.getLogger(__name__)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, method: Method, opts: list, gen: torch.Generator,
                    **progress: Any) -> None:
    """Everything that decides the rest of a run: weights (of whatever shape surgery left), the method's own
    state, optimizer moments and every random stream, written atomically."""
    rng = {"gen": gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"model": model.state_dict(), "method": _loadable(method),
             "optimizers": [o.state_dict() for o in opts], "rng": rng, **progress}
    write_torch(Path(path), state)


def write_torch(path: Path, obj: Any) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically (``files.replacing``) and the same bytes for the same
    state: saved to a file, torch names the archive inside after that file, whose temporary name holds a pid,
    so two saves of one model differed; saved through memory the archive is always named "archive"."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with replacing(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def _loadable(method: Method) -> dict:
    """The method's ``state_dict()``, refused at the first save unless a resumed run could load it (plain data
    only): otherwise a plugin's mistake would surface only after an interruption, as a silent fresh start."""
    state = method.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as e:
        raise TypeError(f"{method.name}.state_dict() cannot be checkpointed: {brief(e)}; keep tensors, numbers, "
                        f"strings, lists and dicts in it (docs/plugins.md)") from None
    return state


class StaleCheckpoint(RuntimeError):
    """A checkpoint that does not fit the run (other code wrote it); it has been removed, so the run can
    start afresh."""


def brief(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message. PyTorch's refusal of a pickle
    that is not plain data advises loading it unsafely; that advice is never relayed."""
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        return "it holds objects other than plain tensors and numbers, which are never loaded: loading them could run code"
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _discard(path: Path, why: str) -> None:
    log.warning("checkpoint %s %s; removed it, the run starts afresh", path, why)
    path.unlink(missing_ok=True)


def checkpoint_progress(path: str | os.PathLike) -> tuple[int, float]:
    """(epochs done, training seconds spent) of a checkpoint, (0, 0) when there is none or it is unreadable
    (then it is removed with one warning)."""
    path = Path(path)
    if not path.is_file():
        return 0, 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: nothing executes
        return int(state["epoch_index"]), float(state["elapsed"])
    except Exception as e:  # torn write, a foreign or crafted file, older code
        _discard(path, f"is unreadable ({brief(e)})")
        return 0, 0.0


def resume_history(history: Path, checkpoint: Path) -> tuple[list[dict], float]:
    """Keep the history records of the epochs a checkpoint covers (later ones are redone) and return them
    with the training seconds already spent; a run without a usable checkpoint starts an empty history.
    A history that does not hold the checkpoint's epochs intact cannot be continued: the checkpoint goes."""
    done, elapsed = checkpoint_progress(checkpoint)
    records: list[dict] = []
    if done:
        try:
            # only the checkpoint's epochs: a line torn by the interruption lies after them
            records = read_history(history, strict=True, limit=done) if history.is_file() else []
        except RunFileError as e:
            records = []
            _discard(checkpoint, f"goes with a broken history ({e})")
        if len(records) != done or [r.get("epoch") for r in records] != list(range(1, done + 1)):
            if Path(checkpoint).is_file():
                _discard(checkpoint, f"covers {done} epochs but {history.name} holds {len(records)} of them")
            records, elapsed = [], 0.0
    write_history(history, records)
    return records, elapsed


def load_checkpoint(path: str | os.PathLike, model: nn.Module, method: Method, gen: torch.Generator) -> dict | None:
    if not Path(path).is_file():
        return None
    device = next(model.parameters()).device
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        fit_shapes_(model, state["model"])
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    except Exception as e:  # written by other code: never half-resume
        _discard(Path(path), f"does not fit this run ({brief(e)})")
        raise StaleCheckpoint(f"checkpoint {path} does not fit this run") from None
    rng = state["rng"]
    gen.set_state(rng["gen"].cpu())
    torch.set_rng_state(rng["torch"].cpu())
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])
    log.info("resuming from %s after epoch %d", path, state["epoch_index"])
    return state
