"""Timer: time per phase and per fit on a scripted clock, the duration budget, and its state across a resume."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ModelCheckpoint, Timer
from torchsystem_trainer.callbacks import timer as timer_module


class Clock:
    """A monotonic clock that moves only when the aggregate works: 1 s per training batch, 0.25 s per
    validation batch."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Timed(Classifier):
    def __init__(self, clock: Clock) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.clock = clock

    def fit(self, inputs, targets):
        self.clock.now += 1.0
        return super().fit(inputs, targets)

    def evaluate(self, inputs, targets):
        self.clock.now += 0.25
        return super().evaluate(inputs, targets)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timer_module.time, "monotonic", clock)
    return clock


def fit(callbacks, clock, tmp_path, max_epochs, ckpt_path=None, sanity=0):
    data = make_data()
    trainer = Trainer(
        callbacks=callbacks, max_epochs=max_epochs, enable_progress_bar=False, default_root_dir=tmp_path,
        num_sanity_val_steps=sanity,
    )
    trainer.fit(Timed(clock), [("train", data), ("validation", data[:2])], ckpt_path=ckpt_path)
    return trainer


def test_time_per_phase_and_per_fit(clock, tmp_path):
    timer = Timer()
    fit([timer], clock, tmp_path, max_epochs=2, sanity=2)
    assert timer.time_elapsed() == timer.time_elapsed("train") == 8.0  # 2 epochs x 4 batches x 1 s
    assert timer.time_elapsed("validation") == 1.0  # 2 epochs x 2 batches x 0.25 s: not the sanity check's
    assert timer.time_elapsed("fit") == 9.5  # and the sanity check's 2 batches x 0.25 s
    assert timer.time_elapsed("test") == 0.0
    assert timer.time_remaining() is None


def test_validate_and_test_outside_fit_are_timed(clock, tmp_path):
    timer = Timer()
    trainer = Trainer(callbacks=[timer], enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.test(Timed(clock), make_data())
    assert timer.time_elapsed("test") == 1.0 and timer.time_elapsed("fit") == 0.0


def test_a_test_run_that_raises_stops_its_clock_at_stage_end(clock, tmp_path):
    class RaisesOnThirdBatch(Timed):
        calls = 0

        def evaluate(self, inputs, targets):
            self.calls += 1
            if self.calls == 3:
                self.clock.now += 0.25
                raise RuntimeError("boom")
            return super().evaluate(inputs, targets)

    timer = Timer()
    trainer = Trainer(callbacks=[timer], enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.test(RaisesOnThirdBatch(clock), make_data())
    assert timer.time_elapsed("test") == 0.75
    clock.now += 10.0  # the clock no longer runs once the run has ended
    assert timer.time_elapsed("test") == 0.75 and timer.state_dict()["time_elapsed"]["test"] == 0.75


def test_the_duration_stops_the_fit_after_the_batch_that_spends_it(clock, tmp_path):
    timer = Timer(duration=6)
    trainer = fit([timer], clock, tmp_path, max_epochs=10)
    assert trainer.progress.step == 6  # epoch 1, batch 1; its validation is skipped
    assert timer.time_elapsed("fit") == 6.5 and timer.time_remaining() == -0.5


def test_a_resumed_fit_continues_counting(clock, tmp_path):
    fit([Timer(duration=7), ModelCheckpoint(save_last=True)], clock, tmp_path, max_epochs=1)  # 4.5 s
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["Timer"]
    assert state["time_elapsed"]["train"] == 4.0 and state["time_elapsed"]["fit"] == 4.5

    resumed = Timer(duration=7)
    trainer = fit([resumed, ModelCheckpoint(save_last=True)], clock, tmp_path, max_epochs=10, ckpt_path="last")
    assert trainer.progress.step == 7  # 4.5 s restored + 3 batches
    assert resumed.time_elapsed("train") == 7.0


def test_a_new_fit_without_a_checkpoint_starts_from_zero(clock, tmp_path):
    timer = Timer()
    fit([timer], clock, tmp_path, max_epochs=1)
    fit([timer], clock, tmp_path, max_epochs=1)
    assert timer.time_elapsed("fit") == 4.5


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [(90, 90.0), (1.5, 1.5), (timedelta(minutes=2), 120.0), ("01:02:03:04", 93784.0)],
    ids=["int", "float", "timedelta", "clock"],
)
def test_duration_forms(duration, seconds):
    assert Timer(duration).duration == seconds


@pytest.mark.parametrize("duration", [0, -1, "1h", True], ids=["zero", "negative", "text", "bool"])
def test_invalid_durations_raise(duration):
    with pytest.raises(ValueError, match=r"Timer: duration=.* is invalid; valid: None, seconds > 0"):
        Timer(duration)


def test_an_unknown_phase_raises():
    with pytest.raises(ValueError, match=r"phase='validate' is invalid; valid: 'train', 'validation'"):
        Timer().time_elapsed("validate")
