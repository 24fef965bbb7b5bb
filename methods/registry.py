"""Decorator registry of methods, extended by installed packages through the ``scnn_bench.methods``
entry-point group (``[project.entry-points."scnn_bench.methods"] name = "pkg.module:Class"``)."""
from __future__ import annotations

import logging
from importlib.metadata import entry_points

from methods.base import Method

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "scnn_bench.methods"
_REGISTRY: dict[str, type[Method]] = {}
#: plugins that failed to load: name -> error line (reported, the other methods still run)
PLUGIN_ERRORS: dict[str, str] = {}
_plugins_loaded = False


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str):
    """Class decorator: ``@register("my_method") class MyMethod(Method): ...``."""
    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of methods.Method")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def load_plugins() -> None:
    """Import every entry point of the group once; a broken plugin is logged with its error and skipped."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if ep.name not in _REGISTRY:
                register(ep.name)(cls)
        except Exception as e:  # a plugin's bug must not take the benchmark down
            PLUGIN_ERRORS[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
            log.error(PLUGIN_ERRORS[ep.name])


def available_methods() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    load_plugins()
    if name not in _REGISTRY:
        hint = f" ({PLUGIN_ERRORS[name]})" if name in PLUGIN_ERRORS else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint}; available methods: "
                                 f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
