"""``FSDPStrategy`` on NCCL with as many processes as the machine has GPUs (one GPU: a world of one process, in this
process; several: the Trainer starts one process per GPU), at ``bf16-mixed``: bfloat16 parameters in compute
(FSDP2's ``MixedPrecisionPolicy``), float32 reductions and step. It trains close to one GPU on the whole batch, and
its sharded checkpoint reloads on one GPU without sharding."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.gpu.helpers import GroupProbe, Plain, tensors
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ModelCheckpoint
from torchsystem_trainer.checkpoint.sharded import read_consolidated
from torchsystem_trainer.strategies import FSDPStrategy, SingleDeviceStrategy

BATCH = 4


def _fit(strategy, batch_size: int, samples: int, callbacks=()) -> tuple[Plain, Trainer]:
    torch.manual_seed(0)
    aggregate = Plain(momentum=0.9)
    loader = DataLoader(TensorDataset(*tensors(samples)), batch_size=batch_size, pin_memory=True)
    trainer = Trainer(callbacks=list(callbacks), strategy=strategy, max_epochs=2, enable_progress_bar=False)
    trainer.fit(aggregate, loader)
    assert aggregate.epoch == 2 and trainer.global_step == 2 * samples // (batch_size * strategy.world_size)
    return aggregate, trainer


def test_fsdp_on_nccl_at_bf16_mixed_trains_as_one_gpu_and_its_checkpoint_loads_on_one(tmp_path: Path):
    world_size = torch.cuda.device_count()
    samples = 16 * world_size  # 4 batches of BATCH per process and epoch
    probe, checkpoint = GroupProbe(), ModelCheckpoint(tmp_path, save_last=True)
    strategy = FSDPStrategy(accelerator="cuda", devices=world_size, precision="bf16-mixed", timeout=120)
    assert strategy.backend == "nccl"
    trained, _ = _fit(strategy, BATCH, samples, [probe, checkpoint])
    assert probe.seen["backend"] == "nccl" and probe.seen["world_size"] == world_size
    assert probe.seen["all_gather"] == list(range(world_size))

    reference, _ = _fit(SingleDeviceStrategy("cuda", precision="bf16-mixed"), BATCH * world_size, samples)
    weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in trained.state_dict().items()}
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(weights[key].float().cpu(), value.float().cpu(), rtol=2e-2, atol=2e-2)

    last = Path(checkpoint.last_model_path or "")
    assert (last / ".metadata").is_file() and len(list(last.glob("rank-*.pt"))) == world_size
    single = Plain().to("cuda")
    saved = read_consolidated(last, weights_only=True)["aggregate"]["modules"]
    single.load_state_dict(saved)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(value.cpu(), weights[key].float().cpu(), rtol=0, atol=0)
