"""Registered classes and their instances survive pickle, deepcopy and torch.save with their identity."""

import copy
import io
import pickle

import torch
from torch.nn import Linear, Module

from torchsystem_trainer.registry import getarguments, gethash, getname, register, setname


@register
class Activation(Module):
    def forward(self, x):
        return x.relu()


@register
class Net(Module):
    def __init__(self, inputs: int, outputs: int, activation: Module):
        super().__init__()
        self.layer = Linear(inputs, outputs)
        self.activation = activation

    def forward(self, x):
        return self.activation(self.layer(x))


class Twin(Module):  # Net, unregistered
    def __init__(self, inputs: int, outputs: int, activation: Module):
        super().__init__()
        self.layer = Linear(inputs, outputs)
        self.activation = activation


@register("config")
class Config:
    def __init__(self, lr: float, betas: tuple = (0.9, 0.999)):
        self.lr, self.betas = lr, betas


def make_net():
    torch.manual_seed(0)
    return Net(4, 2, activation=Activation())


def test_registered_classes_pickle_by_reference():
    for cls in (Net, Config):
        assert pickle.loads(pickle.dumps(cls)) is cls


def test_plain_instance_pickle_round_trip_keeps_identity():
    config = Config(0.1, betas=(0.8, 0.9))
    loaded = pickle.loads(pickle.dumps(config))
    assert getname(loaded) == "config"
    assert getarguments(loaded) == {"lr": 0.1, "betas": (0.8, 0.9)}
    assert gethash(loaded) == gethash(config)


def test_module_pickle_and_deepcopy_keep_identity_and_weights():
    net = make_net()
    setname(net, "renamed")
    for loaded in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert gethash(loaded) == gethash(net)
        assert getarguments(loaded) == {"inputs": 4, "outputs": 2, "activation": "Activation"}
        assert torch.equal(loaded.layer.weight, net.layer.weight)


def test_torch_save_whole_module_round_trip():
    net = make_net()
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is Net
    assert gethash(loaded) == gethash(net)
    inputs = torch.randn(3, 4)
    assert torch.equal(loaded(inputs), net(inputs))


def test_state_dict_is_unchanged_by_registration_and_saves_weights_only():
    net = make_net()
    torch.manual_seed(0)
    twin = Twin(4, 2, activation=Activation())
    assert list(net.state_dict()) == list(twin.state_dict()) == ["layer.weight", "layer.bias"]

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = Net(4, 2, activation=Activation())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.layer.weight, net.layer.weight)
    assert gethash(fresh) == gethash(net)
