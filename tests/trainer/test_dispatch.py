"""The events that end a run or report its failure (ExceptionRaised, FitEnded, StageEnded) reach every handler even
when one raises, and the first exception propagates; every other event stops at the first handler that raises."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint, TensorBoardLogger
from torchsystem_trainer.events import EVENTS, ExceptionRaised, FitEnded, StageEnded
from torchsystem_trainer.trainer.dispatch import DELIVERED_TO_ALL, EventBus

STAGES = ("validate", "test", "predict")


class StageSeen(Recorder):
    """A Recorder that also records StageEnded."""

    def on_stage_ended(self, event) -> None:
        self.events.append(("StageEnded", event.stage, event.reason))


class CannotClose(Callback):
    """Raises OSError at the end of every run, as a logger whose file system went away."""

    def on_fit_ended(self, event) -> None:
        raise OSError("cannot close")

    def on_stage_ended(self, event) -> None:
        raise OSError("cannot close")


class FailsOnSecondEpoch(Classifier):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()

    def fit(self, inputs, targets):
        if self.epoch == 1:
            raise ZeroDivisionError("boom")
        return super().fit(inputs, targets)


def trainer_with(*callbacks: Callback, **kwargs) -> Trainer:
    return Trainer(callbacks=list(callbacks), enable_progress_bar=False, **kwargs)


# -- through the Trainer --------------------------------------------------------------------------------------------


def test_fit_ended_reaches_the_callbacks_after_one_that_raises_and_its_error_propagates(classifier, data):
    seen = Recorder()
    with pytest.raises(OSError, match="cannot close") as caught:
        trainer_with(CannotClose(), seen).fit(classifier, data)
    assert seen.events[-1] == ("FitEnded", "completed")
    assert seen.names().count("FitEnded") == 1
    assert not getattr(caught.value, "__notes__", None)  # only one handler raised: nothing to note


@pytest.mark.parametrize("stage", STAGES)
def test_stage_ended_reaches_the_callbacks_after_one_that_raises_and_its_error_propagates(classifier, data, stage):
    seen = StageSeen()
    with pytest.raises(OSError, match="cannot close"):
        getattr(trainer_with(CannotClose(), seen), stage)(classifier, data)
    assert seen.events[-1] == ("StageEnded", stage, "completed")


@pytest.mark.parametrize("run", ["fit", "test"])
def test_a_tensorboard_logger_after_a_callback_that_raises_at_the_end_still_closes_its_writer(tmp_path, data, run):
    logger = TensorBoardLogger()
    trainer = trainer_with(CannotClose(), logger, default_root_dir=tmp_path)
    torch.manual_seed(0)
    with pytest.raises(OSError, match="cannot close"):
        getattr(trainer, run)(Classifier(), data)
    assert logger.log_dir is not None and logger.writer is None


def test_exception_raised_reaches_every_callback_so_a_checkpoint_is_still_written(tmp_path, data):
    class Refuses(Callback):
        def on_exception_raised(self, event) -> None:
            raise RuntimeError("cannot report")

    seen = Recorder()
    checkpoint = ModelCheckpoint(save_on_exception=True)  # runs after every other callback (as in Lightning)
    trainer = trainer_with(Refuses(), seen, checkpoint, max_epochs=2, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="cannot report") as caught:
        trainer.fit(FailsOnSecondEpoch(), data)
    assert isinstance(caught.value.__context__, ZeroDivisionError)  # the fit's own error, still in the chain
    assert seen.events[-2:] == [("ExceptionRaised", "ZeroDivisionError"), ("FitEnded", "exception")]
    assert (tmp_path / "checkpoints" / "on_exception.ckpt").is_file()


def test_the_first_error_propagates_with_a_note_for_each_later_one(classifier, data):
    class Second(Callback):
        def on_fit_ended(self, event) -> None:
            raise ValueError("second")

    seen = Recorder()
    with pytest.raises(OSError, match="cannot close") as caught:
        trainer_with(CannotClose(), Second(), seen).fit(classifier, data)
    assert seen.events[-1] == ("FitEnded", "completed")
    (note,) = caught.value.__notes__
    assert "FitEnded was still delivered" in note and "Second.on_fit_ended raised too" in note
    assert note.rstrip().endswith("ValueError: second")


def test_other_events_stop_at_the_first_callback_that_raises(classifier, data):
    class Refuses(Callback):
        def on_trained(self, event) -> None:
            raise RuntimeError("refused")

    seen = Recorder()
    with pytest.raises(RuntimeError, match="refused"):
        trainer_with(Refuses(), seen).fit(classifier, data)
    assert "Trained" not in seen.names()
    assert seen.events[-2:] == [("ExceptionRaised", "RuntimeError"), ("FitEnded", "exception")]


def test_a_batch_predicted_handler_that_raises_stops_the_others(classifier):
    class Refuses(Callback):
        def on_batch_predicted(self, event) -> None:
            raise RuntimeError("refused")

    seen = StageSeen()
    with pytest.raises(RuntimeError, match="refused"):
        trainer_with(Refuses(), seen).predict(classifier, make_data())
    assert "BatchPredicted" not in seen.names()
    assert seen.events[-2:] == [("ExceptionRaised", "RuntimeError"), ("StageEnded", "predict", "exception")]


# -- the bus itself -------------------------------------------------------------------------------------------------


class Log(Callback):
    """Appends ``(name, event class name)`` to ``log`` for every event, then raises ``error`` if it has one."""

    def __init__(self, name: str, log: list[tuple[str, str]], error: BaseException | None = None) -> None:
        self.name, self.log, self.error = name, log, error

    def _handle(self, event) -> None:
        self.log.append((self.name, type(event).__name__))
        if self.error is not None:
            raise self.error

    def subscriptions(self):
        return {kind.__name__: [self._handle] for kind in EVENTS}


def bus_of(*callbacks: Log) -> EventBus:
    return EventBus(list(callbacks), [callback.subscriptions() for callback in callbacks])


def test_the_delivered_to_all_events_are_the_three_ending_ones():
    assert DELIVERED_TO_ALL == {ExceptionRaised, FitEnded, StageEnded}


@pytest.mark.parametrize("kind", EVENTS, ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("send", ["dispatch", "emit"])
def test_only_the_ending_events_reach_the_handlers_after_one_that_raised(kind, send):
    log: list[tuple[str, str]] = []
    bus = bus_of(Log("first", log, RuntimeError("first")), Log("second", log))
    with pytest.raises(RuntimeError, match="first"):
        if send == "dispatch":
            bus.dispatch(object.__new__(kind))  # no field is read by these handlers
        else:
            bus.emit(kind, *[None] * len(dataclasses.fields(kind)))
    name = kind.__name__
    expected = [("first", name), ("second", name)] if kind in DELIVERED_TO_ALL else [("first", name)]
    assert log == expected


def test_handlers_lists_each_handler_of_an_ending_event():
    first, second = Log("first", []), Log("second", [])
    bus = bus_of(first, second)
    assert bus.handlers(FitEnded) == (first._handle, second._handle)


def test_a_keyboard_interrupt_in_a_handler_waits_for_the_others():
    log: list[tuple[str, str]] = []
    bus = bus_of(Log("first", log, KeyboardInterrupt()), Log("second", log))
    with pytest.raises(KeyboardInterrupt):
        bus.dispatch(object.__new__(StageEnded))
    assert log == [("first", "StageEnded"), ("second", "StageEnded")]


def test_the_same_exception_raised_by_two_handlers_gets_no_note():
    log: list[tuple[str, str]] = []
    error = RuntimeError("the run's own error, raised again by both")
    bus = bus_of(Log("first", log, error), Log("second", log, error))
    with pytest.raises(RuntimeError) as caught:
        bus.dispatch(object.__new__(ExceptionRaised))
    assert caught.value is error and not getattr(error, "__notes__", None)
    assert len(log) == 2
