"""The float baseline: the trained float model itself, exported at 32 bits per weight."""
from __future__ import annotations

from methods.base import Method, Phase
from methods.registry import register


@register("float")
class FloatBaseline(Method):
    """Reuses the float-model cache, so the baseline is trained once per model, data set, seed and schedule
    and shared with every method that starts from it."""

    needs_float_model = True
    default_grid = {"smoke": {}, "cpu": {}, "paper": {}}

    def phases(self, epochs: int) -> list[Phase]:
        return []
