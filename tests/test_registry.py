import pytest

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


def test_config_validation():
    cls = get_method("self_compression")
    with pytest.raises(ConfigError, match="no parameter 'gama'"):
        cls.from_params(gama=0.1)
    with pytest.raises(ConfigError, match="must be a finite number"):
        cls.from_params(gamma="big")
    with pytest.raises(ValueError, match="gamma"):
        cls.from_params(gamma=-1.0)
