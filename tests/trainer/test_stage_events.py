"""validate, test and predict are bracketed by StageStarted ... StageEnded(reason), whatever the way they end."""

from __future__ import annotations

import pytest
import torch
from typing_extensions import override

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import HOOKS, Callback
from torchsystem_trainer.strategies import SingleDeviceStrategy

STAGES = ("validate", "test", "predict")


class StageRecorder(Recorder):
    """A Recorder that also records the stage events."""

    def on_stage_started(self, event) -> None:
        self.events.append(("StageStarted", event.stage))

    def on_stage_ended(self, event) -> None:
        self.events.append(("StageEnded", event.stage, event.reason))


class RaisesOnSecondBatch(Classifier):
    """Its forward (used by evaluate and by predict) raises ``error`` on the second batch."""

    def __init__(self, error: BaseException) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.error = error
        self.calls = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise self.error
        return super().forward(inputs)


class TeardownRecorder(SingleDeviceStrategy):
    """The CPU strategy, writing "teardown" into ``log`` when it tears down."""

    def __init__(self, log: list[str]) -> None:
        super().__init__("cpu")
        self.log = log

    @override
    def teardown(self, aggregate) -> None:
        self.log.append("teardown")
        super().teardown(aggregate)


def run(trainer: Trainer, stage: str, aggregate, data):
    return getattr(trainer, stage)(aggregate, data)


def batch_events(stage: str, batches: int) -> list[tuple]:
    """What the Recorder records for the first ``batches`` batches of a fresh trainer's stage."""
    if stage == "predict":
        return [("BatchPredicted",)] * batches
    name = "BatchValidated" if stage == "validate" else "BatchTested"
    return [(name, 0, index, 0) for index in range(batches)]


PHASES = {"validate": "validation", "test": "test", "predict": "predict"}
ENDS = {"validate": ("Validated", 0), "test": ("Tested", 0), "predict": ("Predicted",)}


def test_the_stage_hooks_resolve_to_the_stage_events():
    assert HOOKS["on_stage_started"] == "StageStarted" and HOOKS["on_stage_ended"] == "StageEnded"


@pytest.mark.parametrize("stage", STAGES)
def test_a_completed_run_starts_with_stage_started_and_ends_with_stage_ended(classifier, data, stage):
    recorder = StageRecorder()
    run(Trainer(callbacks=[recorder], enable_progress_bar=False), stage, classifier, data)
    assert recorder.events == [
        ("StageStarted", stage),
        ("PhaseStarted", 0, PHASES[stage]),
        *batch_events(stage, 4),
        ENDS[stage],
        ("StageEnded", stage, "completed"),
    ]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    ("error", "reason"),
    [(ZeroDivisionError("boom"), "exception"), (KeyboardInterrupt(), "interrupted")],
    ids=["exception", "keyboard-interrupt"],
)
def test_a_run_that_raises_ends_with_exception_raised_and_stage_ended_then_propagates(data, stage, error, reason):
    recorder = StageRecorder()
    with pytest.raises(type(error)):
        run(Trainer(callbacks=[recorder], enable_progress_bar=False), stage, RaisesOnSecondBatch(error), data)
    assert recorder.events == [
        ("StageStarted", stage),
        ("PhaseStarted", 0, PHASES[stage]),
        *batch_events(stage, 1),
        ("ExceptionRaised", type(error).__name__),
        ("StageEnded", stage, reason),
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_started_handler_that_raises_ends_the_run_as_an_exception(classifier, data, stage):
    class Refuse(Callback):
        def on_stage_started(self, event) -> None:
            raise RuntimeError("refused")

    recorder = StageRecorder()
    with pytest.raises(RuntimeError, match="refused"):
        run(Trainer(callbacks=[Refuse(), recorder], enable_progress_bar=False), stage, classifier, data)
    assert recorder.events == [("ExceptionRaised", "RuntimeError"), ("StageEnded", stage, "exception")]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("failing", [False, True], ids=["completed", "raised"])
def test_the_strategy_is_torn_down_after_a_stage_ended_handler_raises(data, stage, failing):
    log: list[str] = []

    class BrokenEnd(Callback):
        def on_stage_ended(self, event) -> None:
            log.append(f"StageEnded:{event.reason}")
            raise OSError("cannot close")

    aggregate = RaisesOnSecondBatch(ZeroDivisionError("boom")) if failing else Classifier()
    trainer = Trainer(callbacks=[BrokenEnd()], strategy=TeardownRecorder(log), enable_progress_bar=False)
    with pytest.raises(OSError, match="cannot close"):
        run(trainer, stage, aggregate, data)
    assert log == [f"StageEnded:{'exception' if failing else 'completed'}", "teardown"]


def test_fit_fires_fit_events_and_no_stage_events(classifier):
    recorder = StageRecorder()
    data = make_data()
    Trainer(callbacks=[recorder], enable_progress_bar=False).fit(classifier, [("train", data), ("validation", data)])
    names = recorder.names()
    assert names[0] == "FitStarted" and names[-1] == "FitEnded"
    assert "StageStarted" not in names and "StageEnded" not in names
