"""LearningRateMonitor: recorded rates, Lightning's key names, and what it writes to TensorBoard."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks.lr_monitor import LearningRateMonitor, optimizer_keys
from torchsystem_trainer.callbacks.tensorboard import TensorBoardLogger


class EpochScheduled(Classifier):
    """Halves its learning rate at every epoch's end."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def onepoch(self) -> None:
        self.scheduler.step()


class StepScheduled(Aggregate):
    """Two param groups with momentum; halves both rates after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.nn = nn.Linear(4, 2)
        self.criterion = nn.CrossEntropyLoss()
        groups = [{"params": [self.nn.weight]}, {"params": [self.nn.bias], "lr": 0.01}]
        self.optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def forward(self, inputs):
        return self.nn(inputs)

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


def fit(aggregate, callbacks, epochs=3, **arguments):
    torch.manual_seed(0)
    trainer = Trainer(callbacks=callbacks, max_epochs=epochs, enable_progress_bar=False, **arguments)
    trainer.fit(aggregate, make_data())
    return trainer


def test_epoch_interval_records_the_rate_each_epoch_trains_with():
    monitor = LearningRateMonitor()
    fit(EpochScheduled(), [monitor])
    assert monitor.lrs == {"lr-SGD": [0.1, 0.05, 0.025]}
    assert monitor.momentums == {}


def test_step_interval_records_every_group_at_every_optimizer_step_with_momentum():
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    fit(StepScheduled(), [monitor], epochs=2)
    assert monitor.lrs == {
        "lr-SGD/pg1": [0.1 * 0.5**k for k in range(8)],
        "lr-SGD/pg2": [0.01 * 0.5**k for k in range(8)],
    }
    assert monitor.momentums == {"lr-SGD/pg1-momentum": [0.9] * 8, "lr-SGD/pg2-momentum": [0.9] * 8}


def test_step_interval_counts_optimizer_steps_not_batches():
    monitor = LearningRateMonitor(logging_interval="step")
    fit(Classifier(lr=0.2), [monitor], epochs=1, accumulate_grad_batches=2)
    assert monitor.lrs == {"lr-SGD": [0.2, 0.2]}


def test_rates_are_written_to_the_tensorboard_logger(tmp_path):
    logger, monitor = TensorBoardLogger(log_hyperparameters=False), LearningRateMonitor(log_momentum=True)
    # the monitor comes first, yet the logger's writer is open by the time the first epoch starts
    fit(EpochScheduled(), [monitor, logger], default_root_dir=tmp_path)
    accumulator = EventAccumulator(str(logger.log_dir))
    accumulator.Reload()
    written = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in ("lr-SGD", "lr-SGD-momentum")}
    f32 = [torch.tensor(v, dtype=torch.float32).item() for v in (0.1, 0.05, 0.025)]
    assert written == {"lr-SGD": list(zip((0, 4, 8), f32)), "lr-SGD-momentum": [(0, 0.0), (4, 0.0), (8, 0.0)]}


def test_keys_follow_lightning():
    weight, bias = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    first = torch.optim.Adam([weight])
    second = torch.optim.Adam([{"params": [weight]}, {"params": [bias]}])
    third = torch.optim.SGD([{"params": [weight], "name": "head"}], lr=0.1)
    assert [keys for _, keys in optimizer_keys([first, second, third])] == [
        ["lr-Adam"], ["lr-Adam-1/pg1", "lr-Adam-1/pg2"], ["lr-SGD/head"]
    ]
    twice = torch.optim.SGD([{"params": [weight], "name": "a"}, {"params": [bias], "name": "a"}], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD has param groups with the same name \(\['a', 'a'\]\)"):
        optimizer_keys([twice])


def test_adam_momentum_is_beta1_and_an_optimizer_without_momentum_warns():
    aggregate = Classifier()
    aggregate.optimizer = torch.optim.Adam(aggregate.nn.parameters(), lr=0.01, betas=(0.8, 0.99))
    aggregate.other = torch.optim.Adagrad(aggregate.nn.parameters(), lr=0.5)

    monitor = LearningRateMonitor(log_momentum=True)
    with pytest.warns(UserWarning, match="Adagrad has no momentum or betas; its momentum is recorded as 0.0"):
        fit(aggregate, [monitor], epochs=1)
    assert monitor.lrs == {"lr-Adam": [0.01], "lr-Adagrad": [0.5]}
    assert monitor.momentums == {"lr-Adam-momentum": [0.8], "lr-Adagrad-momentum": [0.0]}


def test_an_aggregate_without_optimizer_ends_the_fit_with_an_error():
    class NoOptimizer(Aggregate):
        def __init__(self) -> None:
            super().__init__()
            self.nn = nn.Linear(4, 2)

        def fit(self, inputs, targets):
            return self.nn(inputs), torch.zeros(())

    recorder = Recorder()
    with pytest.raises(ValueError, match="LearningRateMonitor: NoOptimizer holds no optimizer as an attribute"):
        fit(NoOptimizer(), [recorder, LearningRateMonitor()])
    assert recorder.events == [("FitStarted",), ("ExceptionRaised", "ValueError"), ("FitEnded", "exception")]


def test_only_the_interval_s_hook_is_subscribed_and_state_round_trips():
    assert "GradientsComputed" not in LearningRateMonitor("epoch").subscriptions()
    assert "EpochStarted" not in LearningRateMonitor("step").subscriptions()
    monitor = LearningRateMonitor(log_momentum=True)
    fit(EpochScheduled(), [monitor], epochs=2)
    restored = LearningRateMonitor(log_momentum=True)
    restored.load_state_dict(monitor.state_dict())
    assert restored.lrs == monitor.lrs == {"lr-SGD": [0.1, 0.05]}
    assert restored.momentums == monitor.momentums


def test_invalid_interval():
    with pytest.raises(ValueError, match=r"logging_interval='batch' is invalid; valid: 'epoch', 'step'"):
        LearningRateMonitor("batch")  # type: ignore[arg-type]
