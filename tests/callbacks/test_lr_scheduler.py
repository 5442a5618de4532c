"""LearningRateScheduler: when it steps (epoch, real optimizer steps, a monitored value), what it refuses (a
scheduler the aggregate steps too), its state across an exact resume, SWA and the LR finder."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from tests.checkpoint.helpers import Crash, Snapshot, same_weights
from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import (
    Callback,
    LearningRateScheduler,
    SchedulerConflictError,
    StochasticWeightAveraging,
)
from torchsystem_trainer.callbacks.monitor import MonitorError
from torchsystem_trainer.strategies import SingleDeviceStrategy
from torchsystem_trainer.tuner import Tuner


class Rates(Callback):
    """The learning rate each training batch ran with (read at the batch's end: the step is done, the scheduler
    not yet stepped when this callback comes first)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_batch_trained(self, event):
        self.rates.append(event.aggregate.optimizer.param_groups[0]["lr"])


def fit(aggregate, scheduler_callback, loaders=None, **arguments):
    rates = Rates()
    arguments.setdefault("max_epochs", 3)
    trainer = Trainer(callbacks=[rates, scheduler_callback], enable_progress_bar=False, **arguments)
    trainer.fit(aggregate, loaders or make_data())
    return trainer, rates.rates


def test_an_epoch_scheduler_steps_once_at_each_epochs_end():
    aggregate = Classifier(lr=1.0)
    scheduler = StepLR(aggregate.optimizer, step_size=1, gamma=0.5)
    _, rates = fit(aggregate, LearningRateScheduler(scheduler))
    assert rates == [1.0] * 4 + [0.5] * 4 + [0.25] * 4
    assert scheduler.last_epoch == 3


def test_frequency_counts_epochs_or_optimizer_steps():
    aggregate = Classifier(lr=1.0)
    _, rates = fit(aggregate, LearningRateScheduler(StepLR(aggregate.optimizer, 1, 0.5), frequency=2), max_epochs=5)
    assert rates == [1.0] * 8 + [0.5] * 8 + [0.25] * 4
    aggregate = Classifier(lr=1.0)
    scheduler = StepLR(aggregate.optimizer, 1, 0.5)
    _, rates = fit(aggregate, LearningRateScheduler(scheduler, interval="step", frequency=3), max_epochs=2)
    assert rates == [1.0] * 3 + [0.5] * 3 + [0.25] * 2
    assert scheduler.last_epoch == 2  # 8 optimizer steps, every 3rd


def test_a_step_scheduler_steps_after_each_optimizer_step_as_a_hand_written_loop_does():
    torch.manual_seed(0)
    aggregate = Classifier()
    scheduler = OneCycleLR(aggregate.optimizer, max_lr=0.5, total_steps=12)
    _, rates = fit(aggregate, LearningRateScheduler(scheduler, interval="step"))

    torch.manual_seed(0)
    reference = Classifier()
    by_hand = OneCycleLR(reference.optimizer, max_lr=0.5, total_steps=12)
    expected = []
    for _ in range(3):
        for inputs, targets in make_data():
            reference.fit(inputs, targets)
            expected.append(reference.optimizer.param_groups[0]["lr"])
            by_hand.step()
    assert rates == expected
    trained, by_hand_weights = aggregate.state_dict(), reference.state_dict()
    assert list(trained) == list(by_hand_weights)
    assert all(torch.equal(trained[key], by_hand_weights[key]) for key in trained)


def test_a_step_scheduler_skips_the_batches_inside_an_accumulation_window():
    aggregate = Classifier(lr=1.0)
    scheduler = StepLR(aggregate.optimizer, 1, 0.5)
    fit(aggregate, LearningRateScheduler(scheduler, interval="step"), max_epochs=2, accumulate_grad_batches=2)
    assert scheduler.last_epoch == 4  # 8 batches, 4 optimizer steps


class Overflowing(Classifier):
    """The seed's classifier under 16-mixed: its loss is infinite on the second batch, so that step is skipped."""

    def __init__(self) -> None:
        super().__init__(lr=1.0)
        self.calls = 0

    def fit(self, inputs, targets):
        self.optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        if self.calls == 1:
            loss = loss * math.inf
        self.calls += 1
        self.backward(loss)
        self.optimizer.step()
        return outputs, loss


def test_a_step_the_fp16_scaler_skipped_does_not_step_the_scheduler():
    aggregate = Overflowing()
    scheduler = StepLR(aggregate.optimizer, 1, 0.5)
    with pytest.warns(UserWarning, match=r"precision='16-mixed' on the CPU"):
        strategy = SingleDeviceStrategy("cpu", "16-mixed")
    fit(aggregate, LearningRateScheduler(scheduler, interval="step"), max_epochs=1, strategy=strategy)
    assert scheduler.last_epoch == 3  # 4 batches, 1 skipped
    assert aggregate.optimizer.param_groups[0]["lr"] == 0.5**3


def test_reduce_on_plateau_steps_with_the_monitored_validation_loss():
    values = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]  # the validation loss of each epoch

    class Flat(Classifier):
        def evaluate(self, inputs, targets):
            predictions, _ = super().evaluate(inputs, targets)
            return predictions, torch.tensor(values[self.epoch])

    aggregate = Flat(lr=1.0)
    plateau = ReduceLROnPlateau(aggregate.optimizer, patience=1, factor=0.1)
    data = make_data()
    _, rates = fit(
        aggregate, LearningRateScheduler(plateau, monitor="validation/loss"), [("train", data), ("validation", data)],
        max_epochs=6, num_sanity_val_steps=0,
    )
    # 1.0 (best), 1.0 (bad 1), 1.0 (bad 2 > patience: x0.1), 1.0 (bad 1), 0.5 (best), 0.5
    assert [rates[4 * epoch] for epoch in range(6)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])


def test_reduce_on_plateau_skips_epochs_without_its_monitored_phase():
    aggregate = Classifier(lr=1.0)
    plateau = ReduceLROnPlateau(aggregate.optimizer, patience=0)
    data = make_data()
    fit(aggregate, LearningRateScheduler(plateau, monitor="validation/loss"), [("train", data), ("validation", data)],
        max_epochs=4, check_val_every_n_epoch=2)
    assert plateau.last_epoch == 2  # the two epochs that validated
    aggregate = Classifier()
    misspelt = LearningRateScheduler(ReduceLROnPlateau(aggregate.optimizer), monitor="validation/acc")
    with pytest.raises(MonitorError, match=r"'validation/acc' is not in the epoch's results"):
        fit(aggregate, misspelt, [("train", data), ("validation", data)])


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"scheduler": "steplr"}, TypeError, r"scheduler is a str; valid: a torch.optim.lr_scheduler instance"),
        ({"interval": "batch"}, ValueError, r"interval='batch' is invalid; valid: 'epoch', 'step'"),
        ({"frequency": 0}, ValueError, r"frequency=0 is invalid; valid: an int >= 1"),
        ({"monitor": "validation/loss"}, ValueError, r"monitor='validation/loss' is invalid for StepLR"),
        ({"plateau": True}, ValueError, r"monitor=None is invalid for ReduceLROnPlateau"),
        ({"plateau": True, "monitor": "validation/loss", "interval": "step"}, ValueError, r"interval='step' is invalid "
         r"with monitor='validation/loss'; valid: 'epoch'"),
    ],
    ids=["not-a-scheduler", "interval", "frequency", "monitor-without-plateau", "plateau-without-monitor",
         "monitor-per-step"],
)
def test_invalid_arguments_are_refused_naming_them(arguments, error, message):
    optimizer = Classifier().optimizer
    plateau = arguments.pop("plateau", False)
    scheduler = arguments.pop("scheduler", ReduceLROnPlateau(optimizer) if plateau else StepLR(optimizer, 1))
    with pytest.raises(error, match=message):
        LearningRateScheduler(scheduler, **arguments)


def test_a_scheduler_over_another_optimizer_is_refused_when_the_fit_starts():
    stranger = StepLR(Classifier().optimizer, 1)
    with pytest.raises(ValueError, match=r"the scheduler's optimizer \(SGD\) is not one of Classifier's \(SGD\)"):
        fit(Classifier(), LearningRateScheduler(stranger))


class SteppingItsOwn(Classifier):
    """A seed-style aggregate that steps its own scheduler, in fit or in onepoch."""

    def __init__(self, where: str) -> None:
        super().__init__(lr=1.0)
        self.where = where
        self.scheduler = StepLR(self.optimizer, 1, 0.5)

    def fit(self, inputs, targets):
        result = super().fit(inputs, targets)
        if self.where == "fit":
            self.scheduler.step()
        return result

    def onepoch(self):
        if self.where == "onepoch":
            self.scheduler.step()


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("where", ["fit", "onepoch"])
def test_a_scheduler_the_aggregate_steps_too_is_refused_and_never_stepped_twice(where, interval):
    aggregate = SteppingItsOwn(where)
    with pytest.raises(SchedulerConflictError, match=r"the scheduler was stepped outside this callback"):
        Trainer(
            callbacks=[LearningRateScheduler(aggregate.scheduler, interval=interval)], max_epochs=3,
            enable_progress_bar=False,
        ).fit(aggregate, make_data())
    # refused at the callback's first step after the aggregate's: in fit, at the first batch ("step") or at the end
    # of the training phase ("epoch"); in onepoch, at that epoch's end, after the callback's own 4 steps ("step")
    expected = {("fit", "step"): 1, ("fit", "epoch"): 4, ("onepoch", "step"): 4 + 1, ("onepoch", "epoch"): 1}
    assert aggregate.scheduler.last_epoch == expected[where, interval]


@pytest.mark.parametrize("where", ["fit", "onepoch"])
def test_a_seed_style_aggregate_stepping_its_own_scheduler_keeps_working(where):
    aggregate = SteppingItsOwn(where)
    Trainer(max_epochs=2, enable_progress_bar=False).fit(aggregate, make_data())
    assert aggregate.scheduler.last_epoch == (8 if where == "fit" else 2)


def run(tmp_path, extra=(), ckpt_path=None, interval="step", held_by_aggregate=True):
    """train_script's Net with its scheduler stepped by the Trainer instead of by its fit; the scheduler stays an
    attribute of the aggregate (so the aggregate's checkpoint section holds it too) or lives in the callback only."""
    from tests.checkpoint.train_script import Net, loaders

    class TrainerStepped(Net):
        def fit(self, inputs, targets):
            return super(Net, self).fit(inputs, targets)  # Aggregate.fit: no scheduler step of its own

    torch.manual_seed(0)
    aggregate = TrainerStepped()
    scheduler = aggregate.scheduler
    if not held_by_aggregate:
        del aggregate.scheduler
    callback = LearningRateScheduler(scheduler, interval=interval, frequency=2 if interval == "step" else 1)
    trainer = Trainer(
        callbacks=[callback, *extra], max_epochs=3, seed=3, val_check_interval=0.5, enable_progress_bar=False
    )
    try:
        trainer.fit(aggregate, loaders(), ckpt_path=ckpt_path)
    except Crash:
        pass
    return aggregate, callback


@pytest.mark.parametrize("held_by_aggregate", [True, False], ids=["held-by-the-aggregate", "callback-only"])
@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("step", [5, 12], ids=["epoch-0", "epoch-1-at-a-validation"])
def test_its_state_is_checkpointed_and_a_resume_is_exact(tmp_path, interval, step, held_by_aggregate):
    reference, reference_callback = run(tmp_path, interval=interval, held_by_aggregate=held_by_aggregate)
    path = tmp_path / "mid.ckpt"
    _, crashed = run(tmp_path, [Snapshot(path, step=step, crash=2)], interval=interval,
                     held_by_aggregate=held_by_aggregate)
    assert crashed.scheduler.last_epoch != reference_callback.scheduler.last_epoch
    resumed, callback = run(tmp_path, ckpt_path=path, interval=interval, held_by_aggregate=held_by_aggregate)
    assert same_weights(resumed, reference)
    assert callback.scheduler.state_dict() == reference_callback.scheduler.state_dict()
    assert callback.steps == reference_callback.steps


def test_swa_takes_the_learning_rate_over_from_its_first_epoch():
    aggregate = Classifier(lr=1.0)
    scheduler = StepLR(aggregate.optimizer, 1, 0.5)
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=0)
    rates = Rates()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(callbacks=[rates, LearningRateScheduler(scheduler), swa], max_epochs=5, enable_progress_bar=False).fit(
            aggregate, make_data()
        )
    # epochs 0, 1 under StepLR; from epoch 2 (swa_start) SWALR alone
    assert rates.rates[::4] == pytest.approx([1.0, 0.5, 0.05, 0.05, 0.05])
    assert scheduler.last_epoch == 2
    messages = [str(w.message) for w in caught]
    assert any("StochasticWeightAveraging sets the learning rate from epoch 2 on" in m for m in messages)
    assert not any("holds its own scheduler" in m for m in messages)  # the callback's scheduler is not the aggregate's


def test_swa_refuses_a_fraction_of_no_epoch_limit():
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=0.5)
    with pytest.raises(ValueError, match=r"swa_epoch_start=0.5 is a fraction of max_epochs, but the Trainer has "
                                         r"max_epochs=-1"):
        Trainer(callbacks=[swa], max_epochs=-1, max_steps=4, enable_progress_bar=False).fit(Classifier(), make_data())


def test_the_lr_finder_never_steps_a_trainer_owned_scheduler():
    aggregate = Classifier()
    scheduler = StepLR(aggregate.optimizer, 1, 0.5)
    before = scheduler.state_dict()
    trainer = Trainer(callbacks=[LearningRateScheduler(scheduler, interval="step")], enable_progress_bar=False)
    finder = Tuner(trainer).lr_find(aggregate, make_data(samples=64), num_training=10, early_stop_threshold=None)
    assert len(finder.results["lr"]) == 10
    assert scheduler.state_dict() == before


def test_reduce_on_plateau_steps_at_each_epochs_end_with_its_latest_mid_epoch_validation():
    # validations every 3 training batches across epochs of 4 (steps 3, 6, 9 and 12): epochs 0 and 1 validate only
    # in their middle, and their end still steps the scheduler, with that validation's value (Lightning reads the
    # latest value then), as trainer.callback_metrics holds it
    losses = iter([1.0, 2.0, 3.0, 4.0])

    class Worse(Classifier):
        def evaluate(self, inputs, targets):
            predictions, _ = super().evaluate(inputs, targets)
            return predictions, torch.tensor(next(losses))  # one validation batch

    data = make_data()
    aggregate = Worse(lr=1.0)
    plateau = ReduceLROnPlateau(aggregate.optimizer, patience=0, factor=0.5)
    trainer, _ = fit(
        aggregate, LearningRateScheduler(plateau, monitor="validation/loss"), [("train", data), ("validation", data[:1])],
        max_epochs=3, num_sanity_val_steps=0, val_check_interval=3, check_val_every_n_epoch=None,
    )
    assert plateau.last_epoch == 3  # the ends of epochs 0, 1 and 2, with the losses of steps 3, 6 and 12
    assert trainer.callback_metrics["validation/loss"] == 4.0
    assert aggregate.optimizer.param_groups[0]["lr"] == 0.25  # 1.0 best, 2.0 worse (x0.5), 4.0 worse (x0.5)
