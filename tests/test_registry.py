from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import methods.registry as registry
from methods import ConfigError, Method, UnknownMethodError, available_methods, get_method, register


def test_builtins_registered():
    assert {"float", "self_compression"} <= set(available_methods())


def test_register_and_lookup():
    @register("_toy_registered")
    class Toy(Method):
        pass

    assert get_method("_toy_registered") is Toy and Toy.name == "_toy_registered"


def test_register_rejects_non_methods():
    with pytest.raises(TypeError):
        register("_bad")(object)


def test_unknown_name_lists_available():
    with pytest.raises(UnknownMethodError, match="available methods: .*float"):
        get_method("no_such_method")


class PluginMethod(Method):
    @dataclass(frozen=True)
    class Config:
        strength: float = 1.0


def _fake_entry_points(eps):
    return lambda group: [e for e in eps if group == registry.ENTRY_POINT_GROUP]


def test_entry_point_plugin_and_broken_plugin(monkeypatch):
    def broken_load():
        raise ImportError("No module named 'missing_dep'")

    eps = [SimpleNamespace(name="_plugin_ok", value="pkg:PluginMethod", load=lambda: PluginMethod),
           SimpleNamespace(name="_plugin_broken", value="pkg:Broken", load=broken_load)]
    monkeypatch.setattr(registry, "entry_points", _fake_entry_points(eps))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    names = available_methods()
    assert "_plugin_ok" in names and "_plugin_broken" not in names
    assert "missing_dep" in registry.PLUGIN_ERRORS["_plugin_broken"]
    with pytest.raises(UnknownMethodError, match="failed to load"):
        get_method("_plugin_broken")
    m = get_method("_plugin_ok").from_params(strength=2)
    assert m.config.strength == 2.0


def test_config_validation():
    cls = get_method("self_compression")
    with pytest.raises(ConfigError, match="no parameter 'gama'"):
        cls.from_params(gama=0.1)
    with pytest.raises(ConfigError, match="must be a number"):
        cls.from_params(gamma="big")
    with pytest.raises(ValueError, match="gamma"):
        cls.from_params(gamma=-1.0)
