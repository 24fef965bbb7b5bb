"""The one training loop every method runs in, knowing methods only through the ``Method`` hooks."""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmarks.checkpoints import load_checkpoint, save_checkpoint
from benchmarks.data import Dataset, Split, batches, normalize
from benchmarks.device import PRECISIONS
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
EVAL_BATCH = 1000  # test images per forward pass when scoring; changes memory, not the score


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
def evaluate(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy (%) on a split, in eval mode, on logits summed over the image and its mirror (as
    airbench does): one rule for every method and every stored score."""
    was = model.training
    model.eval()
    channels_last = split.images.device.type == "cpu"
    correct = 0
    for i in range(0, len(split), EVAL_BATCH):
        x = normalize(split.images[i:i + EVAL_BATCH], channels_last)
        logits = model(x) + model(x.flip(3))
        correct += (logits.argmax(1) == split.labels[i:i + EVAL_BATCH]).sum().item()
    model.train(was)
    return 100.0 * correct / len(split)


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


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, (n_train + batch_size // 2) // batch_size)
