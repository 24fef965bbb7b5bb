"""Presets: data set, network and schedules sized for a CI smoke test, a 2-core CPU, or a GPU."""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness.calibration import BN_BATCHES
from benchmarks.models import ModelSpec
from benchmarks.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    model: ModelSpec
    float_train: TrainConfig  # the float baseline, also the starting point of methods that need one
    method_train: TrainConfig  # every compression method's own schedule
    # seeds run per grid point unless --seeds says otherwise: a comparison claim needs a mean over >= 3
    seeds: tuple[int, ...] = (0, 1, 2)
    # every artifact's BatchNorm statistics are re-estimated over this many training batches before it is
    # scored (``benchmarks.harness.calibration``; 0 turns it off, as runs before 2026-11-24 had it)
    bn_batches: int = BN_BATCHES


PRESETS = {
    # synthetic data, tiny net: every method end to end in well under two minutes on 2 cores (CI runs it);
    # calibrated over 4 batches, which exercises calibration at a quarter of the cost of a full pass
    "smoke": Preset("smoke", "synthetic", ModelSpec("tinycnn", 1.0),
                    TrainConfig(epochs=3, batch_size=128, lr=0.1),
                    TrainConfig(epochs=3, batch_size=128, lr=0.1), seeds=(0,), bn_batches=4),
    # real CIFAR-10, ResNet-9 at quarter width (0.41 M weights): ~40 s an epoch on 2 cores
    "cpu": Preset("cpu", "cifar10", ModelSpec("resnet9", 0.25),
                  TrainConfig(epochs=14), TrainConfig(epochs=8)),
    # the paper-size ResNet-9 (6.57 M weights): meant for a GPU
    "paper": Preset("paper", "cifar10", ModelSpec("resnet9", 1.0),
                    TrainConfig(epochs=24), TrainConfig(epochs=30)),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
