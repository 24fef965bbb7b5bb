import pytest

from methods import ConfigError, Method, UnknownMethodError, available_methods, get_method, register


def test_builtins_registered():
    assert {"float", "self_compression"} <= set(available_methods())


def test_register_and_lookup():
    @register("_toy_registered")
    class Toy(Method):
        exports_float = True

    assert get_method("_toy_registered") is Toy and Toy.name == "_toy_registered"


def test_register_rejects_non_methods():
    with pytest.raises(TypeError):
        register("_bad")(object)


def test_unknown_name_lists_available():
    with pytest.raises(UnknownMethodError, match="available methods: .*float"):
        get_method("no_such_method")


def test_config_validation():
    cls = get_method("self_compression")
    with pytest.raises(ConfigError, match="no parameter 'gama'"):
        cls.from_params(gama=0.1)
    with pytest.raises(ConfigError, match="must be a finite number"):
        cls.from_params(gamma="big")
    with pytest.raises(ValueError, match="gamma"):
        cls.from_params(gamma=-1.0)


def test_a_compression_method_without_export_is_refused_in_one_line():
    class NoExport(Method):
        def penalty(self, model, task_loss):
            return None

    with pytest.raises(TypeError, match="defines no export\\(\\): it would be measured as float32") as e:
        register("_no_export")(NoExport)
    assert "\n" not in str(e.value) and "_no_export" not in available_methods()


def test_a_knob_that_is_not_a_config_field_is_refused_in_one_line():
    """The knob names the curve every report draws: a misspelt one would silently split or merge curves."""
    from dataclasses import dataclass

    class Misnamed(Method):
        exports_float = True
        knob = "lvl"

        @dataclass(frozen=True)
        class Config:
            level: int = 1

    with pytest.raises(TypeError, match="names knob 'lvl', which is not a field of its Config") as e:
        register("_misnamed_knob")(Misnamed)
    assert "\n" not in str(e.value) and "_misnamed_knob" not in available_methods()
    Misnamed.knob = "level"
    assert register("_named_knob")(Misnamed) is Misnamed


def test_the_plugin_api_is_one_module_with_a_version():
    from methods import api
    assert api.API_VERSION >= 1
    assert all(hasattr(api, name) for name in api.__all__)
    assert {"Method", "register", "LayerCode", "export_layers", "full_shapes", "ConfigError"} <= set(api.__all__)
