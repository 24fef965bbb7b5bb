"""Compression methods behind one interface; ``get_method(name)`` finds built-ins and plugins alike."""
from methods.base import ConfigError, Method, ParamGroup, Phase
from methods.registry import ENTRY_POINT_GROUP, UnknownMethodError, available_methods, get_method, register

from methods import diffq, float_baseline, self_compression, weight_fixing  # noqa: E402,F401  (registers the built-ins)

__all__ = ["Method", "Phase", "ParamGroup", "ConfigError", "register", "get_method", "available_methods",
           "UnknownMethodError", "ENTRY_POINT_GROUP"]
