"""Tuner.lr_find: Lightning's names and schedule, the suggestion, the plot, and no trace left (Lightning #6675)."""

from __future__ import annotations

import copy
import random

import numpy
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import EarlyStopping
from torchsystem_trainer.checkpoint import rng_state
from torchsystem_trainer.tuner import LRFinder, Tuner
from torchsystem_trainer.tuner.lr_finder import schedule


class Net(Aggregate):
    """Adam, a StepLR it steps itself, dropout and BatchNorm: everything a search could leave changed."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)

    def forward(self, inputs):
        return self.nn(inputs)

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


def loader(seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))


def everything(aggregate: Net, data: DataLoader) -> dict:
    """A deep copy of every piece of state the search must leave as it was."""
    return copy.deepcopy({
        "modules": aggregate.state_dict(),
        "optimizer": aggregate.optimizer.state_dict(),
        "scheduler": aggregate.scheduler.state_dict(),
        "epoch": aggregate.epoch,
        "training": [m.training for m in aggregate.modules()],
        "rng": rng_state(),
        "python": random.getstate(),
        "numpy": numpy.random.get_state()[1],
        "loader": data.generator.get_state(),
    })


def assert_same(first, second, where="state") -> None:
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and torch.equal(first, second), where
    elif isinstance(first, numpy.ndarray):
        assert numpy.array_equal(first, second), where
    elif isinstance(first, dict):
        assert list(first) == list(second), where
        for key in first:
            assert_same(first[key], second[key], f"{where}[{key!r}]")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


def trained_net(data: DataLoader) -> tuple[Net, Trainer]:
    torch.manual_seed(0)
    aggregate = Net()
    trainer = Trainer(callbacks=[EarlyStopping(monitor="train/loss", patience=5)], max_epochs=1, enable_progress_bar=False, seed=3)
    trainer.fit(aggregate, data)  # the optimizer and scheduler hold state, epoch is 1
    return aggregate, trainer


def test_the_search_leaves_no_trace(tmp_path):
    data = loader()
    aggregate, trainer = trained_net(data)
    torch.manual_seed(11)
    before = everything(aggregate, data)
    stopping_state, progress = trainer.callbacks[0].state_dict(), trainer.progress.state_dict()
    finder = Tuner(trainer).lr_find(aggregate, data, num_training=20, min_lr=1e-5, max_lr=0.5)
    assert len(finder.results["lr"]) >= 5
    assert_same(everything(aggregate, data), before)
    assert trainer.callbacks[0].state_dict() == stopping_state and trainer.progress.state_dict() == progress
    assert aggregate.optimizer.param_groups[0]["lr"] == before["optimizer"]["param_groups"][0]["lr"]


def test_a_fit_after_the_search_is_the_fit_without_it():
    def continued(search: bool) -> Net:
        data = loader()
        aggregate, trainer = trained_net(data)
        if search:
            Tuner(trainer).lr_find(aggregate, data, num_training=12)
        Trainer(max_epochs=3, enable_progress_bar=False).fit(aggregate, data)
        return aggregate

    with_search, without = continued(True), continued(False)
    assert_same(with_search.state_dict(), without.state_dict())


def test_everything_is_put_back_when_the_search_raises():
    class Failing(Net):
        calls = 0

        def fit(self, inputs, targets):
            Failing.calls += 1
            if Failing.calls == 4:
                raise RuntimeError("boom")
            return super().fit(inputs, targets)

    data = loader()
    torch.manual_seed(0)
    aggregate = Failing()
    before = everything(aggregate, data)
    with pytest.raises(RuntimeError, match="boom"):
        Tuner(Trainer(enable_progress_bar=False)).lr_find(aggregate, data, num_training=10)
    assert_same(everything(aggregate, data), before)


def test_results_follow_lightnings_schedule():
    torch.manual_seed(0)
    finder = Tuner(Trainer(enable_progress_bar=False)).lr_find(
        Classifier(), make_data(64), min_lr=1e-4, max_lr=1e-1, num_training=16, early_stop_threshold=None
    )
    assert finder.results["lr"] == schedule(1e-4, 1e-1, 16, "exponential")
    assert finder.results["lr"][0] == 1e-4 and finder.results["lr"][-1] == pytest.approx(1e-1, rel=1e-12)
    assert len(finder.results["loss"]) == 16
    linear = schedule(0.0, 1.0, 5, "linear")
    assert linear == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_the_search_stops_when_the_loss_diverges():
    torch.manual_seed(0)
    finder = Tuner(Trainer(enable_progress_bar=False)).lr_find(
        Classifier(lr=1.0), make_data(64), min_lr=1e-2, max_lr=1e4, num_training=60
    )
    losses = finder.results["loss"]
    assert len(losses) < 60
    assert losses[-1] > 4.0 * min(losses[:-1]) or not torch.isfinite(torch.tensor(losses[-1]))


def test_suggestion_is_the_steepest_descent_of_the_smoothed_loss():
    lrs = [10.0 ** (i / 4 - 4) for i in range(16)]
    losses = [2.0] * 4 + [2.0, 1.9, 1.5, 0.6, 0.5, 0.45, 0.44, 0.43, 0.5, 1.0, 3.0, 9.0]
    finder = LRFinder("exponential", {"lr": lrs, "loss": losses})
    assert finder.suggestion(skip_begin=2, skip_end=1) == lrs[6]  # 1.9 -> 1.5 -> 0.6: the steepest fall, on log(lr)
    linear = LRFinder("linear", {"lr": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], "loss": [3.0, 2.9, 2.0, 1.95, 1.8, 5.0]})
    assert linear.suggestion(skip_begin=0, skip_end=1) == 0.1  # gradients -1, -5, -4.75, -1, -1.5
    with pytest.warns(UserWarning, match="1 usable point"):
        assert LRFinder("linear", {"lr": lrs[:12], "loss": losses[:12]}).suggestion() is None


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    lrs = [10.0 ** (i / 4 - 4) for i in range(16)]
    finder = LRFinder("exponential", {"lr": lrs, "loss": [1.0 - i / 20 for i in range(16)]})
    path = finder.plot(tmp_path / "plots" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_optimizer_is_required():
    class Two(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.other = torch.optim.SGD(self.nn.parameters(), lr=0.1)

    aggregate = Two()
    weights = copy.deepcopy(aggregate.state_dict())
    with pytest.raises(ValueError, match="exactly one optimizer"):
        Tuner(Trainer(enable_progress_bar=False)).lr_find(aggregate, make_data())
    assert_same(aggregate.state_dict(), weights)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_lr": 0.0}, r"min_lr=0.0 is invalid in 'exponential' mode"),
        ({"max_lr": 1e-9}, r"max_lr=1e-09 is invalid"),
        ({"num_training": 1}, r"num_training=1 is invalid"),
        ({"mode": "cosine"}, r"mode='cosine' is invalid"),
        ({"early_stop_threshold": 0}, r"early_stop_threshold=0 is invalid"),
    ],
    ids=["min_lr", "max_lr", "num_training", "mode", "threshold"],
)
def test_arguments_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        Tuner(Trainer(enable_progress_bar=False)).lr_find(Classifier(), make_data(), **arguments)
