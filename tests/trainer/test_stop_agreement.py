"""Under several processes every rank stops at the same batch, whoever asked (a signal, a clock, a callback)."""

import pytest
import torch

from tests.conftest import Recorder
from torchsystem_trainer import Trainer
from torchsystem_trainer.strategies import SingleDeviceStrategy


class TwoRanks(SingleDeviceStrategy):
    """This process as rank 1 of 2; the other rank asks to stop (code ``other``) after batch ``at``."""

    def __init__(self, other: int, at: int) -> None:
        super().__init__("cpu")
        self.other, self.at, self.decisions = other, at, 0

    @property
    def world_size(self) -> int:
        return 2

    @property
    def global_rank(self) -> int:
        return 1

    def all_reduce(self, tensor, op="sum"):
        if op == "max":  # the stop decision
            self.decisions += 1
            theirs = self.other if self.decisions >= self.at else 0
            return torch.maximum(tensor, torch.tensor(theirs))
        return tensor


@pytest.mark.parametrize(
    ("other", "reason"), [(1, "stopped"), (2, "interrupted"), (3, "max_time")], ids=["callback", "signal", "clock"]
)
def test_every_rank_stops_where_the_other_asked(classifier, data, other, reason):
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], strategy=TwoRanks(other, at=2), max_epochs=3, enable_progress_bar=False)
    trainer.fit(classifier, data)
    assert trainer.progress.step == 2
    assert recorder.events[-1] == ("FitEnded", reason)
