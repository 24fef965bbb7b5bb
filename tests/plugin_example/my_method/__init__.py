"""A complete minimal scnn-bench plugin: L1-regularised float training (the README shows this package)."""
from dataclasses import dataclass

from methods import Method


class MyMethod(Method):
    @dataclass(frozen=True)
    class Config:
        strength: float = 1e-4

    default_grid = {"smoke": {"strength": [1e-3]}, "cpu": {"strength": [1e-5, 1e-4, 1e-3]},
                    "paper": {"strength": [1e-5, 1e-4, 1e-3]}}

    def penalty(self, model, task_loss):
        return self.config.strength * sum(p.abs().sum() for p in model.parameters())
