"""Identities: the seed's example, mlregistry 1.2.3's hashing scheme, and the argument normalisation beyond it."""

import json
from hashlib import md5

import pytest
import torch
from torch import Tensor
from torch.nn import CrossEntropyLoss, Dropout, Linear, Module, ReLU
from torch.optim import Adam

from torchsystem_trainer.registry import (
    getarguments,
    gethash,
    getmetadata,
    getname,
    register,
    sethash,
    setname,
)


def mlregistry_hash(name, arguments):
    """mlregistry 1.2.3, accessors.gethash: md5 of the name followed by the default json.dumps of the arguments."""
    return md5((name + json.dumps(arguments)).encode()).hexdigest()


class MLP(Module):  # the seed's model, verbatim
    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float, activation: Module):
        super().__init__()
        self.input_layer = Linear(input_size, hidden_size, bias=True)
        self.dropout = Dropout(dropout)
        self.activation = activation
        self.output_layer = Linear(hidden_size, output_size)

    def forward(self, features: Tensor):
        features = self.input_layer(features)
        features = self.dropout(features)
        features = self.activation(features)
        return self.output_layer(features)


@pytest.fixture
def torch_classes_registered():
    """Register the seed's torch classes as the seed does; give torch its own __init__s back afterwards."""
    classes = (ReLU, CrossEntropyLoss, Adam)
    saved = {cls: vars(cls).get("__init__") for cls in classes}
    register(ReLU)
    register(CrossEntropyLoss)
    register(Adam, excluded_args=[0])
    yield
    for cls, init in saved.items():
        cls.__init__ = init


def test_seed_example_hash_and_arguments(torch_classes_registered):
    register(MLP)
    model = MLP(784, 256, 10, dropout=0.5, activation=ReLU())
    criterion = CrossEntropyLoss()
    optimizer = Adam(model.parameters(), lr=0.001)

    assert gethash(model) == "af51a51a38f7ad81f9523360fafe7068"
    assert getarguments(model) == {
        "input_size": 784, "hidden_size": 256, "output_size": 10, "dropout": 0.5, "activation": "ReLU"
    }
    assert list(getarguments(model)) == ["input_size", "hidden_size", "output_size", "dropout", "activation"]
    assert getarguments(criterion) == {}
    assert getarguments(optimizer) == {"lr": 0.001}
    assert getmetadata(model) == {
        "hash": "af51a51a38f7ad81f9523360fafe7068",
        "name": "MLP",
        "arguments": getarguments(model),
    }


@register
class Point:
    def __init__(self, x: int, y: float, z, t: str = "5"):
        self.x, self.y, self.z, self.t = x, y, z, t


@register
class Holder:
    def __init__(self, inner):
        self.inner = inner


@register
class Bare:
    def __init__(self, flag: bool = False):
        self.flag = flag


@register("Renamed")
class Aliased:
    def __init__(self, size: int = 1):
        self.size = size


def test_hash_is_md5_of_name_and_unsorted_json_of_arguments():
    point = Point(1, 2.0, "3")
    assert gethash(point) == mlregistry_hash("Point", {"x": 1, "y": 2.0, "z": "3"})
    assert gethash(point) == md5(b'Point{"x": 1, "y": 2.0, "z": "3"}').hexdigest()


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((1, 2.0, "3"), {}),
        ((), {"x": 1, "y": 2.0, "z": "3"}),
        ((), {"z": "3", "x": 1, "y": 2.0}),
        ((1,), {"z": "3", "y": 2.0}),
    ],
    ids=["positional", "keywords-in-order", "keywords-shuffled", "mixed-shuffled"],
)
def test_spelling_of_the_call_does_not_change_the_identity(args, kwargs):
    point = Point(*args, **kwargs)
    assert list(getarguments(point)) == ["x", "y", "z"]
    assert gethash(point) == gethash(Point(1, 2.0, "3"))


def test_defaults_not_passed_are_not_captured_as_in_mlregistry():
    assert getarguments(Point(1, 2.0, "3")) == {"x": 1, "y": 2.0, "z": "3"}
    assert getarguments(Point(1, 2.0, "3", t="5")) == {"x": 1, "y": 2.0, "z": "3", "t": "5"}
    assert gethash(Point(1, 2.0, "3")) != gethash(Point(1, 2.0, "3", "5"))


def test_nested_registered_objects_appear_by_name_or_name_and_arguments():
    assert getarguments(Holder(Bare())) == {"inner": "Bare"}
    assert getarguments(Holder(Bare(flag=True))) == {"inner": {"name": "Bare", "arguments": {"flag": True}}}
    assert getarguments(Holder(Point(1, 2.0, "3", "4"))) == {  # mlregistry's tests/test_nested.py
        "inner": {"name": "Point", "arguments": {"x": 1, "y": 2.0, "z": "3", "t": "4"}}
    }
    assert getarguments(Holder(Aliased())) == {"inner": "Renamed"}


def test_nested_registered_objects_inside_lists_and_dicts_are_described():
    holder = Holder([Bare(), {"head": Aliased(size=3)}, (1, 2)])
    assert getarguments(holder) == {
        "inner": ["Bare", {"head": {"name": "Renamed", "arguments": {"size": 3}}}, (1, 2)]
    }
    assert gethash(holder) == mlregistry_hash(
        "Holder", {"inner": ["Bare", {"head": {"name": "Renamed", "arguments": {"size": 3}}}, [1, 2]]}
    )


def test_captured_arguments_do_not_follow_later_mutation_of_the_caller_list():
    sizes = [1, 2]
    holder = Holder(sizes)
    sizes.append(3)
    getarguments(holder)["inner"].append(4)
    assert getarguments(holder) == {"inner": [1, 2]}


def test_named_registration_names_the_instances_and_enters_the_hash():
    aliased = Aliased(size=2)
    assert getname(aliased) == "Renamed"
    assert gethash(aliased) == mlregistry_hash("Renamed", {"size": 2})


def test_setname_changes_the_hash_and_sethash_fixes_it():
    point = Point(1, 2.0, "3")
    setname(point, "Vertex")
    assert getname(point) == "Vertex"
    assert gethash(point) == mlregistry_hash("Vertex", {"x": 1, "y": 2.0, "z": "3"})

    sethash(point)  # freeze the current hash
    frozen = gethash(point)
    setname(point, "Other")
    assert gethash(point) == frozen

    sethash(point, "custom-id")
    assert gethash(point) == "custom-id"
    assert getmetadata(point) == {"hash": "custom-id", "name": "Other", "arguments": {"x": 1, "y": 2.0, "z": "3"}}


def test_sethash_works_on_unregistered_objects_and_rejects_empty_hashes():
    class Plain:
        pass

    plain = Plain()
    sethash(plain, "abc")
    assert gethash(plain) == "abc"
    assert getmetadata(plain) == {"hash": "abc", "name": "Plain"}
    with pytest.raises(ValueError, match="empty"):
        sethash(plain, "")
    with pytest.raises(ValueError, match="empty"):
        setname(plain, "")


def test_getmetadata_and_getarguments_return_copies():
    point = Point(1, 2.0, "3")
    getmetadata(point)["arguments"]["x"] = 99
    getarguments(point)["x"] = 99
    assert getarguments(point)["x"] == 1


def test_unserialisable_argument_gives_a_clear_type_error():
    holder = Holder(torch.zeros(2))
    with pytest.raises(TypeError, match=r"cannot hash Holder: .*not JSON-serializable.*excluded_args"):
        gethash(holder)
