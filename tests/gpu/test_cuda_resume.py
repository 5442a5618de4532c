"""Exact resumption on a GPU: a fit resumed from a checkpoint written in the middle of an epoch ends with the
uninterrupted run's weights, bit for bit (``deterministic=True``), with dropout masks drawn on the GPU: the random
state of every CUDA device is saved and restored."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoint import train_script
from tests.checkpoint.helpers import Snapshot, run, same_weights
from torchsystem_trainer.checkpoint import load_file, load_rng_state, rng_state, save_atomic

pytestmark = pytest.mark.filterwarnings("ignore:.*was in no epoch's results:UserWarning")

CUDA = {"strategy": "cuda", "deterministic": True}


def _loaders():
    return train_script.loaders(0, augment=True)  # shuffled, augmented from the CPU generator; dropout on the GPU


@pytest.mark.parametrize("metrics", [True, False], ids=["accuracy", "no-metrics"])
def test_a_mid_epoch_resume_on_the_gpu_is_bit_identical(metrics, tmp_path):
    reference, _, expected = run(_loaders, metrics=metrics, **CUDA)
    path = tmp_path / "mid.ckpt"
    _, _, before = run(_loaders, extra=(Snapshot(path, step=11),), metrics=metrics, **CUDA)  # then a crash
    assert len(load_file(path)["rng"]["cuda"]) == torch.cuda.device_count()
    resumed, trainer, after = run(_loaders, ckpt_path=path, metrics=metrics, **CUDA)
    assert next(resumed.parameters()).device.type == "cuda"
    assert same_weights(resumed, reference)
    assert before.batches[:11] + after.batches == expected.batches  # nothing replayed, nothing missed
    assert before.epochs[:1] + after.epochs == expected.epochs  # the epochs' results, the resumed one included
    assert trainer.progress.state_dict() == {"epoch": 3, "batch": 0, "step": 24, "global_step": 24}


def test_an_epoch_boundary_resume_on_the_gpu_is_bit_identical(tmp_path):
    reference, _, expected = run(_loaders, **CUDA)
    path = tmp_path / "end.ckpt"
    run(_loaders, extra=(Snapshot(path, epoch=0),), **CUDA)
    resumed, _, after = run(_loaders, ckpt_path=path, **CUDA)
    assert same_weights(resumed, reference)
    assert after.batches == expected.batches[8:]


def test_the_random_state_of_every_cuda_device_is_restored(tmp_path):
    torch.cuda.init()
    devices = range(torch.cuda.device_count())
    for index in devices:
        with torch.cuda.device(index):
            torch.cuda.manual_seed(100 + index)  # a different stream on each device
    path = save_atomic({"rng": rng_state()}, tmp_path / "rng.ckpt")
    expected = [torch.rand(8, device=f"cuda:{index}") for index in devices]
    torch.cuda.manual_seed_all(7)  # every device elsewhere
    load_rng_state(load_file(path)["rng"])  # read on the CPU, as a checkpoint is
    again = [torch.rand(8, device=f"cuda:{index}") for index in devices]
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
