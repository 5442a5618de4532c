"""Helpers of the GPU tests: a tiny aggregate, pinned loaders, and a loader whose batches are trained with
CUDA's synchronisation check armed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchsystem_trainer import Aggregate
from torchsystem_trainer.callbacks import Callback

SAMPLES, FEATURES, CLASSES, BATCH = 16, 4, 2, 4


class Plain(Aggregate):
    """``nn.Linear(4, 2)``, cross-entropy, SGD; the default ``Aggregate.fit`` (through ``self.backward``). Records
    what its forward saw: ``(device type, input dtype, output dtype, CUDA autocast on)``."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.0) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn.Linear(FEATURES, CLASSES)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=lr, momentum=momentum)
        self.seen: set[tuple[str, torch.dtype, torch.dtype, bool]] = set()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.nn(inputs)
        self.seen.add((inputs.device.type, inputs.dtype, outputs.dtype, torch.is_autocast_enabled("cuda")))
        return outputs  # type: ignore[no-any-return]


def tensors(samples: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[samples, 4] float32`` inputs and ``[samples] int64`` class targets, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    return inputs, torch.randint(0, CLASSES, (samples,), generator=generator)


def loader(samples: int = SAMPLES, seed: int = 0, pin_memory: bool = True, batch_size: int = BATCH) -> DataLoader:
    """A ``DataLoader`` over :func:`tensors`, pinning its batches (``pin_memory=True``) as GPU training should."""
    return DataLoader(TensorDataset(*tensors(samples, seed)), batch_size=batch_size, pin_memory=pin_memory)


@contextlib.contextmanager
def sync_debug(mode: str) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` within the block, the previous mode after."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class SyncChecked:
    """Wraps a loader so that everything the consumer does with a batch, from the moment it receives it until it
    asks for the next, runs under ``torch.cuda.set_sync_debug_mode("error")``: a host-device synchronisation there
    (``.item()``, ``float(tensor)``, a blocking copy to or from the GPU, ``torch.tensor(..., device="cuda")``)
    raises ``RuntimeError``. Loading the batch (the ``DataLoader`` pinning it) and whatever runs before the first
    batch and after the last (a phase's set-up, its results, the epoch's callbacks) run unchecked.

    That is exactly a phase's per-batch path in the Trainer: moving the batch, the aggregate's step, recording the
    loss and the metric, the batch event and its handlers.

    Attributes:
        batches: how many batches were handed out under the check (over every iteration).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches = 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.inner)
        try:
            while True:
                torch.cuda.set_sync_debug_mode("default")
                batch = next(iterator, None)
                if batch is None:
                    return
                self.batches += 1
                torch.cuda.set_sync_debug_mode("error")
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")


class GroupProbe(Callback):
    """A callback recording, when the fit starts, what the process group is and what its collectives return
    (on rank 0; its ``state_dict`` brings that back to the caller from a started process)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_fit_started(self, event: Any) -> None:
        import torch.distributed as dist

        strategy = event.trainer.strategy
        device = strategy.root_device
        rank = torch.tensor([strategy.global_rank], device=device)
        self.seen = {
            "backend": str(dist.get_backend()),
            "world_size": event.trainer.world_size,
            "rank": strategy.global_rank,
            "device": str(device),
            "all_reduce": float(strategy.all_reduce(torch.ones((), device=device))),
            "all_gather": strategy.all_gather(rank).reshape(-1).tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = dict(state["seen"])
