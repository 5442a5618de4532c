"""A fit that fails while it is set up (a loader the strategy refuses) fires no event and still tears the strategy
down, as a checkpoint that cannot be loaded does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from typing_extensions import override

from tests.conftest import Recorder
from torchsystem_trainer import Trainer
from torchsystem_trainer.strategies import SingleDeviceStrategy


class RefusesLoader(SingleDeviceStrategy):
    """The CPU strategy, refusing the ``refused`` phase's loader (as ``DDPStrategy`` refuses a ``DataLoader``
    subclass it cannot rebuild) and writing what it does into ``log``."""

    def __init__(self, log: list[str], refused: str | None) -> None:
        super().__init__("cpu")
        self.log = log
        self.refused = refused

    @override
    def process_dataloader(self, loader: Iterable[Any], phase: str) -> Iterable[Any]:
        self.log.append(f"process:{phase}")
        if phase == self.refused:
            raise TypeError(f"cannot shard the {phase!r} loader")
        return super().process_dataloader(loader, phase)

    @override
    def teardown(self, aggregate: Any) -> None:
        self.log.append("teardown")
        super().teardown(aggregate)


@pytest.mark.parametrize("refused", ["train", "validation"])
def test_a_refused_loader_fails_the_fit_before_any_event_and_the_strategy_is_torn_down(classifier, data, refused):
    log: list[str] = []
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], strategy=RefusesLoader(log, refused), enable_progress_bar=False)
    with pytest.raises(TypeError, match=f"cannot shard the '{refused}' loader"):
        trainer.fit(classifier, [("train", data), ("validation", data)])
    processed = ["process:train"] if refused == "train" else ["process:train", "process:validation"]
    assert log == [*processed, "teardown"]
    assert recorder.events == []  # no FitStarted, ExceptionRaised nor FitEnded for a fit that never started
    assert trainer.loop.loaders == {}  # no loader kept alive by the trainer


def test_the_trainer_fits_after_a_refused_loader(classifier, data):
    log: list[str] = []
    recorder = Recorder()
    strategy = RefusesLoader(log, "validation")
    trainer = Trainer(callbacks=[recorder], strategy=strategy, enable_progress_bar=False)
    with pytest.raises(TypeError):
        trainer.fit(classifier, [("train", data), ("validation", data)])
    strategy.refused = None
    log.clear()
    trainer.fit(classifier, [("train", data), ("validation", data)])
    assert log == ["process:train", "process:validation", "teardown"]
    assert recorder.names()[0] == "FitStarted" and recorder.events[-1] == ("FitEnded", "completed")
    assert trainer.progress.epoch == 1
