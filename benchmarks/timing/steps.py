"""Timing the loop's own training step: the yardstick every run's epoch times are recorded against
(``float_step_seconds``, called by the harness) and the building blocks of ``benchmarks.timing.step_speed``.

It sits beside the training loop, below the harness, so that the harness can time a float step without
importing the command-line tools above it.
"""
from __future__ import annotations

import random
import statistics
import time

import torch

from benchmarks.models import ModelSpec, build_model
from benchmarks.train import TrainConfig, build_optimizers, seed_everything, train_step
from methods import get_method
from methods.base import Method

#: per method, the parameters it is timed with (defaults otherwise)
TIMED_WITH = {"self_compression": {"gamma": 0.0}}


def setup_step(name: str, spec: ModelSpec, cfg: TrainConfig, device: torch.device):
    """A closure running one ``train_step`` of method ``name`` on a fixed random batch."""
    seed_everything(0)
    # the float baseline's own training is the plain loop (its registered method only reads the cache)
    method = Method() if name == "float" else get_method(name).from_params(**TIMED_WITH.get(name, {}))
    model = method.prepare(build_model(spec).to(device))
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    phase = method.phases(cfg.epochs)[0]
    method.on_phase_start(model, 0)
    opts, bases = build_optimizers(method, model, phase, cfg)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (cfg.batch_size,), device=device)
    model.train()
    return lambda: train_step(method, model, opts, bases, phase, cfg, x, y, 1.0)


def time_steps(step, n: int, device: torch.device) -> float:
    """Seconds per step over ``n`` (at least 1) steps, the device waited for."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        stats = step()
    stats.tolist()  # wait for the device
    return (time.perf_counter() - t0) / n


def float_step_seconds(spec: ModelSpec, cfg: TrainConfig, device: torch.device, steps: int = 4) -> float:
    """Seconds of one plain float training step of net ``spec`` at ``cfg``'s batch size and precision,
    median of ``steps`` after one warm-up step: the yardstick a run's epoch times are recorded against.
    Every random stream is left as it was, so the run it is taken for trains as without it."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        step = setup_step("float", spec, cfg, device)
        time_steps(step, 1, device)
        seconds = statistics.median(time_steps(step, 1, device) for _ in range(steps))
    random.setstate(state)
    return seconds
