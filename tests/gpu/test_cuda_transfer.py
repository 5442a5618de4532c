"""Batches reach the GPU asynchronously: pinned host memory copied with ``non_blocking=True`` (the PyTorch
"pin_memory" recipe), so the host never waits for the copy.

The proof is CUDA's own check: under ``torch.cuda.set_sync_debug_mode("error")`` a blocking copy to the GPU raises
``RuntimeError``, an asynchronous one from pinned memory does not.
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.helpers import Plain, loader, sync_debug, tensors
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.strategies import SingleDeviceStrategy


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory()


def test_the_check_sees_a_blocking_copy():  # the control: without it the tests below could not fail
    inputs = _pinned(tensors()[0])
    with sync_debug("error"), pytest.raises(RuntimeError, match="synchroniz"):
        inputs.to("cuda")


@pytest.mark.parametrize(
    "make_batch",
    [
        lambda x, y: (x, y),
        lambda x, y: [x, y],
        lambda x, y: {"inputs": x, "targets": y},
        lambda x, y: (x, {"targets": y, "weights": [_pinned(torch.ones(len(y)))]}),
    ],
    ids=["tuple", "list", "dict", "nested"],
)
def test_a_pinned_batch_moves_without_blocking_the_host(make_batch):
    strategy = SingleDeviceStrategy("cuda")
    inputs, targets = tensors()
    batch = make_batch(_pinned(inputs), _pinned(targets))
    with sync_debug("error"):
        moved = strategy.batch_to_device(batch)
    torch.cuda.synchronize()
    flat_before = [inputs, targets]
    if isinstance(moved, dict):
        flat_after = [moved["inputs"], moved["targets"]]
    elif isinstance(moved[1], dict):
        flat_after = [moved[0], moved[1]["targets"]]
        assert moved[1]["weights"][0].device.type == "cuda"
    else:
        flat_after = list(moved)
    assert type(moved) is type(batch)
    for before, after in zip(flat_before, flat_after, strict=True):
        assert after.device.type == "cuda" and torch.equal(after.cpu(), before)


def test_64_true_casts_on_the_gpu_without_blocking():
    strategy = SingleDeviceStrategy("cuda", "64-true")
    inputs, targets = tensors()
    with sync_debug("error"):
        moved_inputs, moved_targets = strategy.batch_to_device((_pinned(inputs), _pinned(targets)))
    assert moved_inputs.dtype == torch.float64 and moved_targets.dtype == torch.int64
    assert torch.equal(moved_inputs.cpu(), inputs.double())


def test_the_trainer_moves_a_pin_memory_loaders_batches_without_blocking():
    seen = []

    class Moved(Callback):
        def on_batch_trained(self, event):
            seen.append((event.predictions.device.type, event.targets.device.type))

    original = SingleDeviceStrategy.batch_to_device

    class Checked(SingleDeviceStrategy):
        def batch_to_device(self, batch):
            assert all(t.is_pinned() for t in batch)  # DataLoader(pin_memory=True) pinned it
            with sync_debug("error"):
                return original(self, batch)

    torch.manual_seed(0)
    aggregate = Plain()
    Trainer(callbacks=[Moved()], strategy=Checked("cuda"), enable_progress_bar=False).fit(aggregate, loader())
    assert seen == [("cuda", "cuda")] * 4
