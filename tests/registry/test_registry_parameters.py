"""getparameters(): the full signature of a registered object, defaults included; the hash is not affected."""

import pytest
import torch
from torch import nn

from torchsystem_trainer.registry import UnregisteredError, getarguments, gethash, getparameters, register


@register
class Activation(nn.Module):
    def __init__(self, slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()


@register(excluded_kwargs=["device"])
class Net(nn.Module):
    def __init__(
        self,
        inputs: int,
        hidden: int = 32,
        activation: nn.Module = Activation(),  # noqa: B008 (a registered default instance, on purpose)
        *extra: int,
        device: str = "cpu",
        **options: float,
    ) -> None:
        super().__init__()


def test_defaults_not_passed_are_filled_in_signature_order_and_the_hash_is_the_arguments():
    net = Net(4, activation=Activation(0.2), scale=2.0)
    assert getarguments(net) == {"inputs": 4, "activation": {"name": "Activation", "arguments": {"slope": 0.2}},
                                 "scale": 2.0}
    assert list(getparameters(net).items()) == [
        ("inputs", 4),
        ("hidden", 32),
        ("activation", {"name": "Activation", "arguments": {"slope": 0.2}}),
        ("scale", 2.0),
    ]
    assert gethash(net) == gethash(Net(4, activation=Activation(0.2), scale=2.0))


def test_a_registered_default_is_described_and_star_args_are_kept():
    assert getparameters(Net(4, 8, Activation(), 1, 2)) == {
        "inputs": 4, "hidden": 8, "activation": "Activation", "extra": (1, 2)
    }
    assert getparameters(Net(4)) == {"inputs": 4, "hidden": 32, "activation": "Activation"}


def test_excluded_parameters_stay_out_and_a_copy_is_returned():
    class SGD(torch.optim.SGD):
        pass

    register(SGD, excluded_args=[0])
    optimizer = SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    parameters = getparameters(optimizer)
    assert "params" not in parameters and parameters["lr"] == 0.5 and parameters["momentum"] == 0
    assert parameters["nesterov"] is False
    parameters["lr"] = 1.0
    assert getparameters(optimizer)["lr"] == 0.5


def test_unregistered_objects_raise():
    with pytest.raises(UnregisteredError, match="cannot get the parameters of Linear object"):
        getparameters(nn.Linear(1, 1))
