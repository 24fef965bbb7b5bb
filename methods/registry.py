"""Decorator registry of methods, extended by installed packages through the ``scnn_bench.methods``
entry-point group (``[project.entry-points."scnn_bench.methods"] name = "pkg.module:Class"``)."""
from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

from methods.base import ConfigError, Method

ENTRY_POINT_GROUP = "scnn_bench.methods"
_REGISTRY: dict[str, type[Method]] = {}
#: plugins that failed to load: name -> error line (reported, the other methods still run)
PLUGIN_ERRORS: dict[str, str] = {}
#: names claimed by two methods: name -> error line naming both packages (using the name is an error)
CONFLICTS: dict[str, str] = {}
_ORIGINS: dict[type, str] = {}
_plugins_loaded = False


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class MethodNameConflict(ConfigError):
    """Two installed methods claim one name."""


def register(name: str):
    """Class decorator: ``@register("my_method") class MyMethod(Method): ...``."""
    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of methods.Method")
        if cls.export is Method.export and not cls.exports_float:
            raise TypeError(f"method {name!r} ({cls.__module__}.{cls.__qualname__}) defines no export(): it would be "
                            f"measured as float32; define export() (docs/plugins.md), or set exports_float = True if "
                            f"it deliberately stores float weights")
        if cls.knob is not None and cls.knob not in {f.name for f in dataclasses.fields(cls.Config)}:
            raise TypeError(f"method {name!r} ({cls.__module__}.{cls.__qualname__}) names knob {cls.knob!r}, which is "
                            f"not a field of its Config; set knob to the Config field that trades size against "
                            f"accuracy, or to None (docs/plugins.md)")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _origin(cls: type) -> str:
    """Which package a method class comes from, for error messages."""
    return _ORIGINS.get(cls, f"scnn-bench ({cls.__module__})" if cls.__module__.startswith("methods.")
                        else cls.__module__)


def load_plugins() -> None:
    """Import every entry point of the group once. A plugin that fails to import is recorded with its error
    and skipped; one whose name is already taken makes that name an error (``MethodNameConflict``) that
    names both packages, since which of the two a grid means is then ambiguous. Nothing is logged here: the
    caller says each problem once (``plugin_problems``), and using a broken name is itself the error."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"package {ep.dist.name if ep.dist else '?'}, {ep.value}"
        try:
            cls = ep.load()
        except Exception as e:  # a plugin's bug must not take the benchmark down
            PLUGIN_ERRORS[ep.name] = f"plugin {ep.name!r} ({where}) failed to load: {type(e).__name__}: {e}"
            continue
        if ep.name in _REGISTRY and _REGISTRY[ep.name] is not cls:
            CONFLICTS[ep.name] = (f"two methods are named {ep.name!r}: {_origin(_REGISTRY[ep.name])} and the "
                                  f"plugin from {where}; rename the plugin's entry point (or uninstall one)")
            continue
        try:
            register(ep.name)(cls)
            _ORIGINS[cls] = where
        except Exception as e:
            PLUGIN_ERRORS[ep.name] = f"plugin {ep.name!r} ({where}) failed to load: {type(e).__name__}: {e}"


def plugin_problems() -> list[str]:
    """One line per installed plugin that cannot be used (it failed to load, or its name is taken twice)."""
    load_plugins()
    return [*PLUGIN_ERRORS.values(), *CONFLICTS.values()]


def available_methods() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    load_plugins()
    if name in CONFLICTS:
        raise MethodNameConflict(CONFLICTS[name])
    if name not in _REGISTRY:
        hint = f" ({PLUGIN_ERRORS[name]})" if name in PLUGIN_ERRORS else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint}; available methods: "
                                 f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
