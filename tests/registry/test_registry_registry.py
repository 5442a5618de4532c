"""Registry: filing classes by name, looking them up, and reporting their signatures."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch.nn import Module

from torchsystem_trainer.registry import Registry, RegistrationError, getarguments, getname


class MLP(Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float, activation: Module):
        super().__init__()


class GLU(Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float, activation: Module):
        super().__init__()


class Optimizer:
    def __init__(self, model_params, learning_rate: float):
        pass


def test_seed_registry_example():
    registry = Registry[Module]()
    registry.register(MLP)
    registry.register(GLU)

    model = registry.get("MLP")(784, 256, 10, dropout=0.5, activation=Module())
    assert isinstance(model, MLP)
    assert registry.keys() == ["MLP", "GLU"]
    expected = {
        "input_size": "int", "hidden_size": "int", "output_size": "int", "dropout": "float", "activation": "Module"
    }
    for name in registry.keys():
        assert registry.signature(name) == expected


def test_excluded_parameters_leave_the_signature_and_unannotated_ones_are_any():
    registry = Registry()
    registry.register(Optimizer, excluded_args=[0], excluded_kwargs=["model_params"])  # mlregistry's example
    optimizer = registry.get("Optimizer")(model_params={"param": "someparams"}, learning_rate=0.01)
    assert getarguments(optimizer) == {"learning_rate": 0.01}
    assert registry.signature("Optimizer") == {"learning_rate": "float"}

    class Loose:
        def __init__(self, anything, count: int | None = None):
            pass

    registry.register(Loose)
    assert registry.signature("Loose") == {"anything": "Any", "count": "int | None"}


def test_named_registration_files_and_names():
    registry = Registry()

    @registry.register("perceptron")
    class Perceptron:
        def __init__(self, size: int):
            pass

    assert registry.keys() == ["perceptron"]
    assert registry.get("perceptron") is Perceptron
    assert getname(registry.get("perceptron")(3)) == "perceptron"


def test_bare_decorator_returns_the_class():
    registry = Registry()

    @registry.register
    class Foo:
        def __init__(self, x: int, y: float, z: str):
            pass

    assert registry.get("Foo") is Foo
    assert registry.signature("Foo") == {"x": "int", "y": "float", "z": "str"}
    assert "Foo" in registry and len(registry) == 1


def test_missing_name_gives_none_as_in_mlregistry():
    registry = Registry()
    assert registry.get("nothing") is None
    assert registry.signature("nothing") is None


def test_name_taken_by_another_class_is_an_error_and_the_class_is_left_untouched():
    registry = Registry()

    class Model:
        def __init__(self, a: int):
            pass

    registry.register(Model)
    first = Model

    class Model:  # noqa: F811 - another class with the same name
        def __init__(self, b: int):
            pass

    init = Model.__init__
    with pytest.raises(RegistrationError, match="'Model' is already taken in this registry"):
        registry.register(Model)
    assert Model.__init__ is init
    assert registry.get("Model") is first
    registry.register(first)  # the same class again is fine
    assert registry.keys() == ["Model"]


def test_signature_is_a_copy():
    registry = Registry()
    registry.register(GLU)
    registry.signature("GLU")["dropout"] = "str"
    assert registry.signature("GLU")["dropout"] == "float"


@pytest.fixture
def safe_globals():
    """Restore torch's process-wide safe globals after the test."""
    previous = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(previous)


class Scale(Module):
    def __init__(self, features: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(features, dtype=torch.float32))

    def forward(self, inputs):
        return inputs * self.weight


def test_a_registered_module_class_loads_whole_with_weights_only_as_upstream(safe_globals):
    buffer = io.BytesIO()
    torch.save(Scale(3), buffer)  # an instance of a class not registered yet
    with pytest.raises(pickle.UnpicklingError, match="Scale"):
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    registry = Registry[Module]()
    registry.register(Scale)

    class Plain:
        def __init__(self, rate: float):
            pass

    registry.register(Plain)  # not a module: not added
    assert Scale in torch.serialization.get_safe_globals()
    assert Plain not in torch.serialization.get_safe_globals()
    buffer = io.BytesIO()
    torch.save(Scale(3), buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert type(loaded) is Scale and torch.equal(loaded.weight, torch.arange(3.0))
    assert getarguments(loaded) == {"features": 3}
