"""The ``Method`` interface: the hooks through which the one training loop runs every compression method.

A method never measures its own size: ``export()`` hands the harness a ``CompressedModel`` and the
accounting code measures that. Hyperparameters live in a frozen dataclass ``Config`` per method, so a run's
settings are explicit, hashable and checked (an unknown or badly typed grid value is refused up front).

Plugins import all of this through ``methods.api`` (docs/plugins.md documents the hooks, the exported form and
the pitfalls outside authors met; ``examples/plugin`` is a complete plugin package).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one fresh optimizer for the network's own weights."""

    epochs: int
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam"
    lr: float | None = None  # None: the training config's peak learning rate
    schedule: str = "warmup_linear"  # or "constant"
    weight_decay: float | None = None  # None: the training config's
    grad_clip: float | None = None


@dataclass
class ParamGroup:
    """Extra parameters a method trains with their own optimizer settings (never the LR schedule's decay
    unless ``scheduled``)."""

    params: list[nn.Parameter]
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduled: bool = False
    eps: float = 1e-8  # Adam's epsilon: with a large lr, 1e-8 makes every step about lr long whatever the gradient


class ConfigError(ValueError):
    """A method parameter is unknown or has a value of the wrong kind."""


class Method:
    """Base class: a method that does nothing is plain float training."""

    name: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Config:
        pass

    #: per preset, the grid swept by default: {preset: {param: [values]}}
    default_grid: ClassVar[dict[str, dict[str, list[Any]]]] = {}
    #: start from the trained float model of the cache instead of random weights
    needs_float_model: ClassVar[bool] = False
    #: the parameter that trades size against accuracy (γ, λ, δ): runs that differ only in it lie on one curve
    #: of the figures and tables, and any other parameter that differs starts a curve of its own
    knob: ClassVar[str | None] = None
    #: the method deliberately stores float32 weights (the float baseline and its controls). Every other method
    #: must define ``export``: registration refuses one that does not, since it would silently report float sizes
    exports_float: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_params(cls, **params: Any) -> "Method":
        return cls(make_config(cls.Config, params, cls.name))

    # --- hooks, in the order the loop calls them -------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Wrap or patch the model before training (quantizers, masks, ...)."""
        return model

    def phases(self, epochs: int) -> list[Phase]:
        return [Phase(epochs)]

    def on_phase_start(self, model: nn.Module, phase: int) -> None:
        """Called before each phase's optimizer is built (e.g. fix another share of the weights)."""

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        return []

    def weight_params(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters trained by the phase optimizer: by default all not claimed by ``param_groups``."""
        extra = {id(p) for g in self.param_groups(model) for p in g.params}
        return [p for p in model.parameters() if id(p) not in extra and p.requires_grad]

    def before_step(self, model: nn.Module, progress: float) -> None:
        """Before each step's forward pass; ``progress`` is the share of the phase's steps already done
        (0 at its first step), for schedules of the method's own (e.g. a penalty warm-up)."""

    def penalty(self, model: nn.Module, task_loss: torch.Tensor) -> torch.Tensor | None:
        """Differentiable term added to the task loss (which it may scale by, e.g. to stay a fixed share)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Between backward and the optimizer step (e.g. zero the gradients of frozen weights)."""

    def after_step(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """After each optimizer step; may change the model's structure (the loop copes)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Whatever the method wants in the per-epoch history (its own estimates, not the measured size)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State the method keeps outside the model (the model's own tensors are checkpointed anyway)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` when an interrupted run resumes (after ``prepare``)."""

    def export(self, model: nn.Module, spec: Any):
        """The compressed model in the accounting's exported form (``benchmarks.compressed``): one
        ``LayerCode`` per topology node, built into a ``CompressedModel`` by ``export_layers``. The default
        stores every weight as float32 (32 bits)."""
        from benchmarks.compressed import export_float

        return export_float(model, spec)


def make_config(cls: type, params: dict[str, Any], method: str) -> Any:
    """Build a frozen config from grid values, refusing unknown keys and values of the wrong kind."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in params.items():
        if k not in fields:
            raise ConfigError(f"method {method!r} has no parameter {k!r}; its parameters are "
                              f"{', '.join(fields) or '(none)'}")
        default = getattr(cls(), k)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ConfigError(f"{method}.{k} must be true or false, got {v!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{method}.{k} must be a finite number, got {v!r}")
            if isinstance(default, int) and not float(v).is_integer():
                raise ConfigError(f"{method}.{k} must be an integer, got {v!r}")
            params[k] = type(default)(v)
        if isinstance(default, str) and not isinstance(v, str):
            raise ConfigError(f"{method}.{k} must be a string, got {v!r}")
    try:
        cfg = cls(**params)
        check = getattr(cfg, "validate", None)
        if check is not None:
            check()
    except ConfigError:
        raise
    except ValueError as e:  # a plugin's ``validate`` may raise plain ValueError: still bad input, not a bug
        raise ConfigError(f"{method}: {e}") from None
    return cfg
