"""hyperparameters(): every registered part with its full signature, the optimizers' settings, the Trainer's."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import Classifier
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import hyperparameters
from torchsystem_trainer.registry import gethash, register


@register
class Gate(nn.Module):
    def __init__(self, slope: float = 0.1, inplace: bool = False) -> None:
        super().__init__()


@register
class Block(nn.Module):
    def __init__(self, width: int, gate: nn.Module | None = None, note: str = "b") -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.gate = gate


@register
class Net(nn.Module):
    def __init__(self, features: int, classes: int, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(*(Block(features) for _ in range(depth)))
        self.head = nn.Linear(features, classes)


class Adam(torch.optim.Adam):
    pass


register(Adam, excluded_args=[0])


class Model(Aggregate):
    def __init__(self) -> None:
        super().__init__()
        self.nn = Net(4, 2, depth=1)
        self.block = Block(3, gate=Gate(0.2))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = Adam(self.nn.parameters(), lr=0.01)
        self.extra = [torch.optim.SGD(self.block.parameters(), lr=0.5)]
        self.note = "not registered"

    @property
    def id(self) -> str:
        return gethash(self.nn)


def test_everything_that_defines_a_run_in_this_order():
    model = Model()
    trainer = Trainer(
        max_epochs=7, accumulate_grad_batches=2, gradient_clip_val=1.0, seed=5, precision="bf16-mixed",
        enable_progress_bar=False,
    )
    params = hyperparameters(model, trainer)
    adam = {key: value for key, value in model.optimizer.param_groups[0].items() if key != "params"}
    sgd = {key: value for key, value in model.extra[0].param_groups[0].items() if key != "params"}
    expected = {
        "aggregate": "Model",
        "aggregate/id": gethash(model.nn),
        "nn": "Net",
        "nn/features": 4,
        "nn/classes": 2,
        "nn/depth": 1,
        "nn/dropout": 0.0,  # a default that was not passed
        "nn/body/0": "Block",  # registered modules further down, with their defaults
        "nn/body/0/width": 4,
        "nn/body/0/gate": None,
        "nn/body/0/note": "b",
        "block": "Block",
        "block/width": 3,
        "block/gate": "Gate",
        "block/gate/slope": 0.2,
        "block/note": "b",
        "block/gate/inplace": False,  # the nested object's default, from the module itself
        "optimizer": "Adam",
        **{f"optimizer/{key}": value if not isinstance(value, tuple) else str(value) for key, value in adam.items()},
        "extra/0": "SGD",
        **{f"extra/0/{key}": value for key, value in sgd.items()},
        "trainer/max_epochs": 7,
        "trainer/max_steps": None,
        "trainer/max_time": None,
        "trainer/min_epochs": None,
        "trainer/min_steps": None,
        "trainer/accumulate_grad_batches": 2,
        "trainer/gradient_clip_val": 1.0,
        "trainer/gradient_clip_algorithm": "norm",
        "trainer/check_val_every_n_epoch": 1,
        "trainer/val_check_interval": 1.0,
        "trainer/limit_train_batches": None,
        "trainer/limit_val_batches": None,
        "trainer/seed": 5,
        "trainer/deterministic": False,
        "trainer/precision": "bf16-mixed",
        "trainer/strategy": "SingleDeviceStrategy",
        "trainer/world_size": 1,
    }
    assert params == expected
    assert list(dict.fromkeys(key.split("/")[0] for key in params)) == [
        "aggregate", "nn", "block", "optimizer", "extra", "trainer"
    ]
    assert params["optimizer/betas"] == "(0.9, 0.999)" and params["optimizer/lr"] == 0.01
    assert params["extra/0/lr"] == 0.5 and "criterion" not in params and "note" not in params


def test_several_param_groups_are_numbered_and_live_values_win():
    model = Classifier()
    model.optimizer = torch.optim.SGD(
        [{"params": [model.nn.weight], "lr": 0.1}, {"params": [model.nn.bias], "lr": 0.01, "momentum": 0.9}]
    )
    model.optimizer.param_groups[1]["lr"] = 0.02  # a scheduler changed it
    params = hyperparameters(model)
    assert params["optimizer"] == "SGD"
    assert params["optimizer/0/lr"] == 0.1 and params["optimizer/1/lr"] == 0.02
    assert params["optimizer/1/momentum"] == 0.9
    assert not any(key.startswith("trainer/") for key in params)


def test_an_aggregate_without_identity_or_registered_parts():
    params = hyperparameters(Classifier())
    assert params["aggregate"] == "Classifier" and "aggregate/id" not in params
    assert {key for key in params if not key.startswith("optimizer")} == {"aggregate"}
    assert all(value is None or isinstance(value, (bool, int, float, str)) for value in params.values())
