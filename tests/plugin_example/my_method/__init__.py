"""A complete minimal scnn-bench plugin (the README shows this package): L1-regularised training, then every
layer exported as real integer codes, ``bits`` per weight with one float32 scale per output channel.

The harness measures the size from that export (never from the method), writes it to the packed file and
scores the model decoded from the file, so what this method claims is what it stores.
"""
from dataclasses import dataclass

import torch

from benchmarks.compressed import LayerCode, export_layers, full_shapes
from benchmarks.models import topology
from benchmarks.topology import weight_of
from methods import ConfigError, Method


class MyMethod(Method):
    """L1-regularised float training, exported at ``bits`` bits per weight (symmetric, per-channel scale)."""

    @dataclass(frozen=True)
    class Config:
        strength: float = 1e-4  # L1 weight
        bits: int = 6  # code width of every weight in the export

        def validate(self) -> None:  # bad values are ConfigError: the CLI names them and exits 2
            if not self.strength >= 0:
                raise ConfigError(f"my_method.strength must be >= 0, got {self.strength}")
            if not 2 <= self.bits <= 16:
                raise ConfigError(f"my_method.bits must lie in [2, 16], got {self.bits}")

    default_grid = {"smoke": {"strength": [1e-3]}, "cpu": {"strength": [1e-5, 1e-4, 1e-3]},
                    "paper": {"strength": [1e-5, 1e-4, 1e-3]}}

    def penalty(self, model, task_loss):
        return self.config.strength * sum(weight_of(m).abs().sum() for m in _layers(model).values())

    def export(self, model, spec):
        full = full_shapes(spec)  # shapes in the uncompressed net: the denominators of every percentage
        top = 2 ** (self.config.bits - 1) - 1
        layers = []
        for node in topology(model).nodes:
            w = weight_of(dict(model.named_modules())[node.name]).detach().float().cpu()
            flat = w.reshape(w.shape[0], -1)  # reshape, not view: weights may be channels_last
            scale = (flat.abs().amax(dim=1) / top).clamp(min=1e-12)
            codes = torch.round(flat / scale[:, None]).long().reshape(w.shape)
            layers.append(LayerCode(node.name, node.kind, tuple(w.shape), full[node.name], "channel", codes,
                                    bits=torch.full((w.shape[0],), self.config.bits), scales=scale))
        return export_layers(model, spec, layers)


def _layers(model):
    return {n.name: dict(model.named_modules())[n.name] for n in topology(model).nodes}
