"""Each way a fit ends fires the events the events module's table says."""

import pytest
import torch

from tests.conftest import Classifier, Recorder
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.trainer import fit_loop


def tail(recorder, n):
    return recorder.events[-n:]


def test_max_epochs_completes(classifier, data):
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], max_epochs=2, enable_progress_bar=False)
    trainer.fit(classifier, data)
    assert tail(recorder, 3) == [("Trained", 1), ("Iterated", 1), ("FitEnded", "completed")]
    assert trainer.current_epoch == 2 and trainer.global_step == 8 and classifier.epoch == 2


def test_max_steps_stops_mid_epoch_and_skips_that_epochs_validation(classifier, data):
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], max_steps=6, enable_progress_bar=False)
    trainer.fit(classifier, [("train", data), ("validation", data)])
    assert trainer.global_step == 6
    assert tail(recorder, 4) == [("BatchTrained", 1, 1, 6), ("Trained", 1), ("Iterated", 1), ("FitEnded", "max_steps")]
    assert recorder.names().count("Validated") == 1  # epoch 0's only


def test_max_steps_at_the_end_of_an_epoch_still_validates(classifier, data):
    recorder = Recorder()
    Trainer(callbacks=[recorder], max_steps=4, enable_progress_bar=False).fit(
        classifier, [("train", data), ("validation", data)]
    )
    assert tail(recorder, 3) == [("Validated", 0), ("Iterated", 0), ("FitEnded", "max_steps")]


def test_max_time_is_checked_after_every_batch(classifier, data, monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(fit_loop.time, "monotonic", lambda: float(next(clock)))  # where the epoch loop reads it
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], max_time=2.5, enable_progress_bar=False)
    trainer.fit(classifier, data)  # deadline = 0 + 2.5; batches read the clock at 1, 2, 3
    assert trainer.progress.step == 3
    assert tail(recorder, 1) == [("FitEnded", "max_time")]


def test_should_stop_from_a_callback(classifier, data):
    class StopAtStep2(Callback):
        def on_batch_trained(self, event):
            if event.step == 2:
                event.trainer.should_stop = True

    recorder = Recorder()
    Trainer(callbacks=[StopAtStep2(), recorder], max_epochs=5, enable_progress_bar=False).fit(classifier, data)
    assert tail(recorder, 4) == [("BatchTrained", 0, 1, 2), ("Trained", 0), ("Iterated", 0), ("FitEnded", "stopped")]


def test_stop_iteration_committed_by_the_aggregate_as_in_the_seed(classifier, data):
    class EnqueueStop(Callback):
        def on_validated(self, event):
            if event.epoch == 1:
                event.aggregate.events.enqueue(StopIteration)

    recorder = Recorder()
    Trainer(callbacks=[EnqueueStop(), recorder], max_epochs=10, enable_progress_bar=False).fit(
        classifier, [("train", data), ("validation", data)]
    )
    assert tail(recorder, 3) == [("Validated", 1), ("Iterated", 1), ("FitEnded", "stopped")]
    assert classifier.epoch == 2


def test_exception_fires_exception_raised_and_fit_ended_then_propagates(classifier, data):
    class Boom(Classifier):
        def fit(self, inputs, targets):
            raise ZeroDivisionError("boom")

    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], enable_progress_bar=False)
    with pytest.raises(ZeroDivisionError, match="boom"):
        trainer.fit(Boom(), data)
    assert recorder.events == [
        ("FitStarted",), ("EpochStarted", 0), ("PhaseStarted", 0, "train"),
        ("ExceptionRaised", "ZeroDivisionError"), ("FitEnded", "exception"),
    ]


def test_keyboard_interrupt_ends_the_fit_cleanly(classifier, data):
    class Interrupt(Callback):
        def on_batch_trained(self, event):
            if event.step == 3:
                raise KeyboardInterrupt

    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder, Interrupt()], max_epochs=2, enable_progress_bar=False)
    trainer.fit(classifier, data)  # returns normally
    assert trainer.interrupted
    assert tail(recorder, 3) == [("BatchTrained", 0, 2, 3), ("ExceptionRaised", "KeyboardInterrupt"), ("FitEnded", "interrupted")]


def test_the_strategy_is_torn_down_after_every_ending(classifier, data):
    class Boom(Classifier):
        def fit(self, inputs, targets):
            raise RuntimeError("x")

    aggregate = Boom()
    with pytest.raises(RuntimeError):
        Trainer(enable_progress_bar=False).fit(aggregate, data)
    assert "step" not in aggregate.optimizer.__dict__  # the optimizer has its own step back
    assert aggregate._backward is None


def test_zero_limits_train_nothing(classifier, data):
    before = classifier.nn.weight.detach().clone()
    for limits in ({"max_steps": 0}, {"max_epochs": 0}):
        recorder = Recorder()
        Trainer(callbacks=[recorder], enable_progress_bar=False, **limits).fit(classifier, data)
        reason = "max_steps" if "max_steps" in limits else "completed"
        assert recorder.events == [("FitStarted",), ("FitEnded", reason)]
    assert torch.equal(classifier.nn.weight, before)
