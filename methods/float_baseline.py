"""The float baseline, and the equal-budget float control that every compression method is measured against.

``float`` is the trained float model itself, exported at 32 bits per weight. A method that fine-tunes it
trains longer than it did (the ``cpu`` preset: 14 epochs, then 8 more), so a gap to ``float`` mixes the cost
of compression with the gain of more training. ``float_control`` removes that confound: it trains the float
network with exactly the schedule of another method (its phases, optimizers, learning rates, from the same
starting point, on the same batches) and compresses nothing. The reports pair every run with the control of
the same schedule (``result.json``'s ``budget.schedule``) and measure "within 1 point of float" against it.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import ConfigError, Method, Phase
from methods.registry import get_method, register


@register("float")
class FloatBaseline(Method):
    """Reuses the float-model cache, so the baseline is trained once per model, data set, seed and schedule
    and shared with every method that starts from it."""

    needs_float_model = True
    exports_float = True
    default_grid = {"smoke": {}, "cpu": {}, "paper": {}}

    def phases(self, epochs: int) -> list[Phase]:
        return []


@register("float_control")
class FloatControl(Method):
    """The float network trained with another method's schedule and no compression (the equal-budget control)."""

    exports_float = True

    @dataclass(frozen=True)
    class Config:
        like: str = "self_compression"  # the method whose schedule (with its default settings) is copied
        from_float: bool = True  # start from the cached float model (always, when ``like`` always does)

        def validate(self) -> None:
            if self.like in ("float", "float_control"):
                raise ConfigError(f"float_control.like must name a compression method, got {self.like!r}")
            try:
                get_method(self.like)
            except KeyError as e:
                raise ConfigError(f"float_control.like: {e.args[0]}") from None

    # one control per distinct schedule of the default grids: self_compression and diffq share theirs
    default_grid = {
        "smoke": {"like": ["self_compression", "weight_fixing"], "from_float": [False]},
        "cpu": {"like": ["self_compression", "weight_fixing"], "from_float": [True]},
        "paper": {"like": ["self_compression", "weight_fixing"], "from_float": [False]},
    }

    @property
    def needs_float_model(self) -> bool:
        return self.config.from_float or get_method(self.config.like)().needs_float_model

    def phases(self, epochs: int) -> list[Phase]:
        return get_method(self.config.like)().phases(epochs)
