"""A phase's results live on the phase's device, restored ones included (a resumed fit on a GPU)."""

import pytest
import torch

from torchsystem_trainer.trainer.results import PhaseResults


def test_a_fresh_phase_without_metrics_restores_the_saved_losses_onto_its_own_device():
    saved = PhaseResults(None)  # as written by a checkpoint: read with map_location="cpu"
    for loss in (0.5, 0.25):
        saved.update(torch.tensor(loss), 4, None, None)
    saved.loss_sum()  # folds them into the running total
    saved.update(torch.tensor(1.0), 2, None, None)
    fresh = PhaseResults(None, device="meta")  # stands for the GPU a resumed fit trains on
    fresh.load_state_dict(saved.state_dict())
    assert [loss.device.type for loss in fresh.losses] == ["meta"]
    assert fresh.total is not None and fresh.total.device.type == "meta"
    assert fresh.sizes == [2] and fresh.count == 10


def test_folding_keeps_the_sample_weighted_sum():
    results = PhaseResults(None)
    losses, sizes = torch.rand(1030, generator=torch.Generator().manual_seed(0)), [4] * 1029 + [2]
    for loss, size in zip(losses, sizes, strict=True):  # 1030 batches: one fold at 1024, the rest at the end
        results.update(loss, size, None, None)
    expected = float(torch.dot(losses.double(), torch.tensor(sizes, dtype=torch.float64)))
    assert results.compute()["loss"] == pytest.approx(expected / sum(sizes), rel=1e-6)
