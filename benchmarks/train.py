"""The one training loop every method runs in, knowing methods only through the ``Method`` hooks."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from benchmarks.data import Dataset, Split, batches, normalize
from benchmarks.device import PRECISIONS
from benchmarks.files import RunFileError, read_history, replacing
from benchmarks.models import ModelSpec, build_model
from benchmarks.topology import fit_shapes_
from methods.base import Method, Phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 14
    batch_size: int = 512
    lr: float = 0.4  # peak, reached after the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.2  # share of the phase spent warming up linearly; then linear decay to 0
    label_smoothing: float = 0.2
    seed: int = 0
    # "bf16": the forward pass under bf16 autocast (it lowers only matrix products and convolutions); the
    # loss, quantizers, penalties, optimizer state and every score stay fp32. Part of the run id.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


class NonFiniteLoss(RuntimeError):
    pass


CHECK_EVERY = 25  # steps between the host's looks at the running loss (NaN check, progress bar)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_factor(schedule: str, step: int, total: int, warmup: float) -> float:
    if schedule == "constant":
        return 1.0
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


def _make_optimizer(kind: str, params: list, lr: float, weight_decay: float, momentum: float,
                    eps: float = 1e-8) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps)
    raise ValueError(f"unknown optimizer {kind!r}; use 'sgd' or 'adam'")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000, flip_tta: bool = True) -> float:
    """Top-1 accuracy (%) on a split, in eval mode; by default on logits averaged over the image and its
    mirror (as airbench does), the same for every method."""
    was = model.training
    model.eval()
    channels_last = split.images.device.type == "cpu"
    correct = 0
    for i in range(0, len(split), batch_size):
        x = normalize(split.images[i:i + batch_size], channels_last)
        logits = model(x) + model(x.flip(3)) if flip_tta else model(x)
        correct += (logits.argmax(1) == split.labels[i:i + batch_size]).sum().item()
    model.train(was)
    return 100.0 * correct / len(split)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, split: Split, n_batches: int, batch_size: int = 512,
                         seed: int = 0) -> nn.Module:
    """Replace every BatchNorm's running mean and variance by their plain average over ``n_batches``
    augmented training batches of the network as it now is (weights untouched). Running statistics are an
    exponential average over training steps, so they lag weights that moved late (bit depths falling at the
    end of a schedule): this measures how much accuracy that lag costs."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    channels_last = split.images.device.type == "cpu"
    with torch.no_grad():  # the statistics update in the forward pass; no graph is needed
        for i, (x, _) in enumerate(batches(split, batch_size, gen, train=True, channels_last=channels_last)):
            if i == n_batches:
                break
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was)
    return model


def train(method: Method, model: nn.Module, data: Dataset, cfg: TrainConfig,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
          checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Run every phase of ``method`` on ``model`` (already on the training device and prepared).

    ``on_epoch`` receives each epoch's history record. Raises ``NonFiniteLoss`` on a NaN/inf loss.
    With ``checkpoint``, the whole training state is saved there after every epoch, and a run that finds
    one resumes after its last epoch as if it had never stopped: the same batches and the same noise, equal
    up to the order of float summations.
    """
    gen = seed_everything(cfg.seed)
    device = data.train.images.device
    channels_last = device.type == "cpu"
    n_steps = steps_per_epoch(len(data.train), cfg.batch_size)
    t_start = time.perf_counter()
    resume = load_checkpoint(checkpoint, model, method, gen) if checkpoint else None
    elapsed0 = resume["elapsed"] if resume else 0.0
    if channels_last:
        model.to(memory_format=torch.channels_last)
    epoch_index = resume["epoch_index"] if resume else 0
    for phase_index, phase in enumerate(method.phases(cfg.epochs)):
        done = 0  # epochs of this phase already trained (by an interrupted run)
        if resume and phase_index < resume["phase_index"]:
            continue
        if resume and phase_index == resume["phase_index"]:
            done = resume["phase_epochs"]
            if done >= phase.epochs:
                continue
        if not done:
            method.on_phase_start(model, phase_index)
        opts, bases = build_optimizers(method, model, phase, cfg)
        if done:
            for opt, st in zip(opts, resume["optimizers"]):
                opt.load_state_dict(st)
        total = phase.epochs * n_steps
        step = done * n_steps
        for phase_epoch in range(done, phase.epochs):
            t0 = time.perf_counter()
            model.train()
            # running sums stay on the device: the host reads them only every CHECK_EVERY steps (a GPU
            # must not stall each step to report a loss)
            sums = torch.zeros(3, device=device)  # task loss · n, correct, total loss (NaN/inf sticks)
            seen = 0
            bar = tqdm(batches(data.train, cfg.batch_size, gen, train=True, channels_last=channels_last),
                       total=n_steps, desc=f"{method.name or 'train'} ep {epoch_index + 1}",
                       leave=False, disable=None if progress else True)  # None: off when not a TTY
            for x, y in bar:
                method.before_step(model, step / total)
                sums += train_step(method, model, opts, bases, phase, cfg, x, y,
                                   lr_factor(phase.schedule, step, total, cfg.warmup))
                seen += len(y)
                step += 1
                if step % CHECK_EVERY == 0 or seen >= len(data.train):
                    loss_sum, correct, total_loss = sums.tolist()
                    if not math.isfinite(total_loss):
                        raise NonFiniteLoss(f"loss became {total_loss} by epoch {epoch_index + 1}, step {step}; "
                                            f"lower the learning rate or the method's penalty weight")
                    if not bar.disable:
                        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
            train_seconds = time.perf_counter() - t0
            loss_sum, correct, _ = sums.tolist()
            record = {"epoch": epoch_index + 1, "phase": phase_index, "train_loss": loss_sum / max(1, seen),
                      "train_acc": 100.0 * correct / max(1, seen), "test_acc": evaluate(model, data.test),
                      "epoch_seconds": train_seconds, "steps": n_steps, **method.epoch_metrics(model)}
            log.info("epoch %d: %s", epoch_index + 1, {k: round(v, 4) if isinstance(v, float) else v
                                                       for k, v in record.items() if not isinstance(v, dict)})
            if on_epoch is not None:
                on_epoch(record)
            epoch_index += 1
            if checkpoint:
                save_checkpoint(checkpoint, model, method, opts, gen, epoch_index=epoch_index,
                                phase_index=phase_index, phase_epochs=phase_epoch + 1,
                                elapsed=elapsed0 + time.perf_counter() - t_start)
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return model


def train_step(method: Method, model: nn.Module, opts: list[torch.optim.Optimizer], bases: list[list[float]],
               phase: Phase, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, lr_f: float) -> torch.Tensor:
    """One optimizer step of the loop at learning-rate factor ``lr_f``; returns, on the device and without
    a host synchronisation, (task loss · batch size, correct predictions, total loss)."""
    for opt, base in zip(opts, bases):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * (lr_f if g.get("scheduled", True) else 1.0)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        out = model(x)
    loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
    pen = method.penalty(model, loss)  # fp32, outside autocast
    total_loss = loss if pen is None else loss + pen
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    total_loss.backward()
    method.after_backward(model)
    if phase.grad_clip:
        nn.utils.clip_grad_norm_([p for g in opts[0].param_groups for p in g["params"]], phase.grad_clip)
    for opt in opts:
        opt.step()
    stats = torch.stack([loss.detach() * len(y), (out.argmax(1) == y).sum().float(), total_loss.detach()])
    # drop this step's graph before the method may reshape parameters: a live graph keeps each
    # parameter's gradient accumulator, which remembers the old shape
    del out, loss, pen, total_loss
    method.after_step(model, opts)
    return stats


def save_checkpoint(path: str | os.PathLike, model: nn.Module, method: Method, opts: list, gen: torch.Generator,
                    **progress: Any) -> None:
    """Everything that decides the rest of a run: weights (of whatever shape surgery left), the method's own
    state, optimizer moments and every random stream, written atomically."""
    rng = {"gen": gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"model": model.state_dict(), "method": method.state_dict(),
             "optimizers": [o.state_dict() for o in opts], "rng": rng, **progress}
    with replacing(Path(path)) as tmp:
        torch.save(state, tmp)


class StaleCheckpoint(RuntimeError):
    """A checkpoint that does not fit the run (other code wrote it); it has been removed, so the run can
    start afresh."""


def _brief(e: Exception) -> str:
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
        _discard(path, f"is unreadable ({_brief(e)})")
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
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
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
        _discard(Path(path), f"does not fit this run ({_brief(e)})")
        raise StaleCheckpoint(f"checkpoint {path} does not fit this run") from None
    rng = state["rng"]
    gen.set_state(rng["gen"].cpu())
    torch.set_rng_state(rng["torch"].cpu())
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])
    log.info("resuming from %s after epoch %d", path, state["epoch_index"])
    return state


def build_optimizers(method: Method, model: nn.Module, phase: Phase, cfg: TrainConfig):
    """A fresh optimizer for the weights (per phase) and one per extra parameter group of the method."""
    lr = phase.lr if phase.lr is not None else cfg.lr
    wd = phase.weight_decay if phase.weight_decay is not None else cfg.weight_decay
    opts = [_make_optimizer(phase.optimizer, method.weight_params(model), lr, wd, cfg.momentum)]
    for g in method.param_groups(model):
        opt = _make_optimizer(g.optimizer, g.params, g.lr, g.weight_decay, cfg.momentum, g.eps)
        opt.param_groups[0]["scheduled"] = g.scheduled
        opts.append(opt)
    bases = [[g["lr"] for g in opt.param_groups] for opt in opts]
    return opts, bases


def float_cache_path(cache_dir: str | os.PathLike, spec: ModelSpec, data_fingerprint: str, cfg: TrainConfig) -> Path:
    """Where the float model of (net, data content, schedule with its seed) is cached."""
    key = hashlib.sha256(json.dumps([spec.as_dict(), data_fingerprint, asdict(cfg)], sort_keys=True).encode())
    return Path(cache_dir) / f"float-{key.hexdigest()[:16]}.pt"


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, (n_train + batch_size // 2) // batch_size)


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
                log.warning("float-model cache %s is unreadable (%s); training it again", path, _brief(e))
                path.unlink()
                model = fresh()
        ckpt, hist = path.with_suffix(".ckpt"), path.with_suffix(".history.jsonl")
        history, elapsed = resume_history(hist, ckpt)

        def on_epoch(record: dict) -> None:
            history.append(record)
            with open(hist, "a") as f:
                f.write(json.dumps(record) + "\n")

        t0 = time.perf_counter()
        try:
            train(Method(), model, data, cfg, on_epoch=on_epoch, progress=progress, checkpoint=ckpt)
        except StaleCheckpoint:  # removed: train the entry from the start
            history, elapsed = resume_history(hist, ckpt)
            model = fresh()
            train(Method(), model, data, cfg, on_epoch=on_epoch, progress=progress, checkpoint=ckpt)
        meta = {"history": history, "train_seconds": elapsed + time.perf_counter() - t0, "key": path.stem}
        with replacing(path) as tmp:
            torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
        ckpt.unlink(missing_ok=True)
        hist.unlink(missing_ok=True)
        retrain.unlink(missing_ok=True)
    return model, {**meta, "digest": state_digest(model)}
