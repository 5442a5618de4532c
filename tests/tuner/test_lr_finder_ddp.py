"""Tuner.lr_find under DDP (2 gloo processes on CPU, launched like torchrun): every rank gets the same curve and
suggestion, and every rank's aggregate is left as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.strategies._distributed import run_ranks, values


def _search(rank: int) -> dict:
    from tests.conftest import Classifier, make_data
    from torchsystem_trainer import Trainer
    from torchsystem_trainer.strategies import DDPStrategy
    from torchsystem_trainer.tuner import Tuner

    torch.manual_seed(rank)  # different weights per rank: DDP broadcasts rank 0's during the search
    aggregate = Classifier()
    before = copy.deepcopy((aggregate.state_dict(), aggregate.optimizer.state_dict()))
    data = make_data(samples=64, seed=10 + rank)  # each rank its own batches: the losses differ per rank
    trainer = Trainer(strategy=DDPStrategy(), enable_progress_bar=False)
    finder = Tuner(trainer).lr_find(aggregate, data, min_lr=1e-3, max_lr=1.0, num_training=24, early_stop_threshold=None)
    after = (aggregate.state_dict(), aggregate.optimizer.state_dict())
    unchanged = all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1] == after[1]
    return {"results": finder.results, "suggestion": finder.suggestion(skip_begin=2), "unchanged": unchanged}


@pytest.mark.slow
def test_every_rank_gets_one_suggestion_and_keeps_its_state():
    rank0, rank1 = values(run_ranks(_search, timeout_s=120))
    assert rank0["results"] == rank1["results"] and len(rank0["results"]["lr"]) == 24
    assert rank0["suggestion"] == rank1["suggestion"] is not None
    assert rank0["unchanged"] and rank1["unchanged"]
