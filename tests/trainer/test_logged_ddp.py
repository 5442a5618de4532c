"""``Aggregate.log`` under DDPStrategy with 2 gloo processes: the epoch values are reduced across processes, and
processes that log different names fail together instead of hanging."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier
from tests.strategies._distributed import run_ranks, values
from torchsystem_trainer import Trainer
from torchsystem_trainer.strategies import DDPStrategy

pytestmark = pytest.mark.slow  # several processes per test


class RankLogging(Classifier):
    """Logs the process's rank + 1 in every reduction during validation (shards of 7 and 6 samples in batches of 3:
    sizes 3, 3, 1 on rank 0 and 3, 3 on rank 1); with ``extra``, rank 1 also logs a name rank 0 does not."""

    def __init__(self, rank: int, extra: bool = False) -> None:
        super().__init__()
        self.rank, self.extra = rank, extra

    def evaluate(self, inputs, targets):
        outputs, loss = super().evaluate(inputs, targets)
        value = torch.tensor(float(self.rank + 1))
        self.log("mean", value)
        self.log("sum", value, reduce_fx="sum")
        self.log("max", value, reduce_fx="max")
        self.log("min", float(self.rank + 1), reduce_fx="min")
        if self.extra and self.rank == 1:
            self.log("only_here", value)
        return outputs, loss


def _validate(rank: int, extra: bool) -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(13, 4, generator=generator), torch.randint(0, 2, (13,), generator=generator))
    trainer = Trainer(strategy=DDPStrategy(timeout=30), enable_progress_bar=False, enable_model_summary=False,
                      verbose=False)
    try:
        return {"results": trainer.validate(RankLogging(rank, extra), DataLoader(data, batch_size=3))}
    except RuntimeError as error:
        return {"error": str(error)}


def test_epoch_values_are_reduced_across_processes():
    rank0, rank1 = values(run_ranks(_validate, False, timeout_s=60))
    assert rank0["results"] == rank1["results"]
    results = rank0["results"]
    assert results["mean"] == pytest.approx((1 * 7 + 2 * 6) / 13, rel=1e-6)  # weighted by the batch sizes
    assert results["sum"] == 3 * 1 + 2 * 2  # three batches of rank 0, two of rank 1
    assert (results["max"], results["min"]) == (2.0, 1.0)


def test_processes_that_log_different_names_fail_together():
    rank0, rank1 = values(run_ranks(_validate, True, timeout_s=60))
    for rank in (rank0, rank1):
        assert "the processes did not log the same names" in rank["error"]
