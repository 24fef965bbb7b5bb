"""A complete minimal scnn-bench plugin (README and docs/plugins.md show this file): L1-regularised training,
then every layer exported as real integer codes, ``bits`` per weight with one float32 scale per output channel.
The harness measures the size from that export, never from the method, so what it claims is what it stores.
"""
from dataclasses import dataclass

import torch

from methods.api import ConfigError, LayerCode, Method, export_layers, full_shapes, topology, weight_of


class MyMethod(Method):
    """L1-regularised float training, exported at ``bits`` bits per weight (symmetric, per-channel scale)."""

    @dataclass(frozen=True)
    class Config:
        strength: float = 1e-4  # L1 weight
        bits: int = 6  # code width of every weight in the export

        def validate(self) -> None:  # bad values are ConfigError: the CLI names them and exits 2
            if not (self.strength >= 0 and 2 <= self.bits <= 16):
                raise ConfigError(f"my_method needs strength >= 0 and bits in [2, 16], got {self}")

    default_grid = {"smoke": {"strength": [1e-3]}, "cpu": {"strength": [1e-5, 1e-4, 1e-3]}}

    def penalty(self, model, task_loss):
        modules = dict(model.named_modules())
        return self.config.strength * sum(weight_of(modules[n.name]).abs().sum() for n in topology(model).nodes)

    def export(self, model, spec):
        full, top, modules, layers = full_shapes(spec), 2 ** (self.config.bits - 1) - 1, dict(model.named_modules()), []
        for node in topology(model).nodes:
            w = weight_of(modules[node.name]).detach().float().cpu()
            flat = w.reshape(w.shape[0], -1)  # reshape, not view: weights may be channels_last
            scale = (flat.abs().amax(dim=1) / top).clamp(min=1e-12)
            codes = torch.round(flat / scale[:, None]).long().reshape(w.shape)
            layers.append(LayerCode(node.name, node.kind, tuple(w.shape), full[node.name], "channel", codes,
                                    bits=torch.full((w.shape[0],), self.config.bits), scales=scale))
        return export_layers(model, spec, layers)
