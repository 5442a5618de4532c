"""``DDPStrategy`` on NCCL with as many processes as the machine has GPUs (one GPU: a world of one process, in
this process; several: the Trainer starts one process per GPU). It trains as one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from tests.gpu.helpers import GroupProbe, Plain, tensors
from torchsystem_trainer import Trainer
from torchsystem_trainer.strategies import DDPStrategy, SingleDeviceStrategy

BATCH = 4


def _fit(strategy, batch_size: int, samples: int, callbacks=()) -> Plain:
    torch.manual_seed(0)
    aggregate = Plain()
    loader = DataLoader(TensorDataset(*tensors(samples)), batch_size=batch_size, pin_memory=True)
    trainer = Trainer(
        callbacks=list(callbacks), strategy=strategy, max_epochs=2, deterministic=True, enable_progress_bar=False
    )
    trainer.fit(aggregate, loader)
    assert aggregate.epoch == 2 and trainer.global_step == 2 * samples // (batch_size * strategy.world_size)
    return aggregate


def test_ddp_on_nccl_trains_as_one_process_on_the_whole_batch():
    world_size = torch.cuda.device_count()
    samples = 16 * world_size  # 4 batches of BATCH per process and epoch
    probe = GroupProbe()
    strategy = DDPStrategy(accelerator="cuda", devices=world_size, timeout=120)
    assert strategy.backend == "nccl"
    trained = _fit(strategy, BATCH, samples, [probe])
    assert probe.seen == {
        "backend": "nccl",
        "world_size": world_size,
        "rank": 0,
        "device": "cuda:0",
        "all_reduce": float(world_size),
        "all_gather": list(range(world_size)),
    }
    assert "forward" not in trained.nn.__dict__  # the DDP routing is undone after the fit
    assert not dist.is_initialized()  # the group the strategy made is gone

    reference = _fit(SingleDeviceStrategy("cuda"), BATCH * world_size, samples)  # the shards' batches, together
    for ours, theirs in zip(trained.parameters(), reference.parameters(), strict=True):
        assert ours.device.type == "cuda"
        if world_size == 1:  # one process: DDP's all-reduce copies, its division by 1 is exact
            assert torch.equal(ours, theirs)
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_ddp_on_nccl_at_mixed_precision(precision):
    world_size = torch.cuda.device_count()
    strategy = DDPStrategy(accelerator="cuda", devices=world_size, precision=precision, timeout=120)
    torch.manual_seed(0)  # as _fit does: the weights it starts from
    before = Plain().nn.weight.detach().clone()
    trained = _fit(strategy, BATCH, 16 * world_size)
    assert torch.isfinite(trained.nn.weight).all()
    assert not torch.equal(trained.nn.weight.detach().cpu(), before)
