"""Sharding loaders across processes: every process iterates its own part of the dataset.

Training uses ``torch.utils.data.DistributedSampler``, which pads the dataset with repeated samples (or drops its
tail with ``drop_last``) so that every process runs the same number of batches; the processes must stay in
lockstep, as each backward pass all-reduces gradients. Evaluation uses :class:`DistributedEvalSampler`, which
neither pads nor drops: the shards partition the dataset, every sample is counted exactly once, and metrics
reduced over the processes equal the single-process values. Padding evaluation sets with duplicates, as Lightning
does, skews them (Lightning issue #7929). Evaluation runs no collective per batch, so shards may differ in length.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = ["DistributedEvalSampler", "distribute_loader", "shuffle_seed_of", "unshardable_reason"]


class DistributedEvalSampler(Sampler[int]):
    """Shard a map-style dataset across processes without padding: rank ``r`` of ``W`` gets the indices
    ``r, r + W, r + 2W, ...`` (of a shuffled order when ``shuffle``), so shard sizes differ by at most one and
    together hold every index exactly once.

    Args:
        dataset: a sized dataset.
        num_replicas: number of processes (>= 1).
        rank: this process's 0-based rank (< ``num_replicas``).
        shuffle: permute the indices first, with a generator seeded ``seed + epoch`` (the same order on every
            rank, as ``DistributedSampler`` does).
        seed: the shuffle seed, the same on every rank.

    Raises:
        ValueError: for ``num_replicas < 1`` or a rank outside ``0..num_replicas-1``.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"DistributedEvalSampler: rank={rank}, num_replicas={num_replicas}; valid: num_replicas >= 1 and "
                "0 <= rank < num_replicas"
            )
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order: list[int] = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` in the shuffle seed (a no-op without ``shuffle``)."""
        self.epoch = epoch


def unshardable_reason(loader: Any) -> str | None:
    """Why :func:`distribute_loader` cannot shard ``loader``.

    Returns:
        ``None`` when it can; ``""`` when ``loader`` is already sharded (its sampler is a ``DistributedSampler``
        or a :class:`DistributedEvalSampler`); otherwise the reason, as a sentence fragment.
    """
    if not isinstance(loader, DataLoader):
        return f"it is a {type(loader).__name__}, not a torch DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an IterableDataset, which has no indices to shard (split it by rank inside it)"
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        return f"it has a custom batch_sampler ({type(loader.batch_sampler).__name__})"
    sampler = loader.sampler
    if isinstance(sampler, (DistributedSampler, DistributedEvalSampler)):
        return ""
    if type(sampler) is RandomSampler and (sampler.replacement or sampler.num_samples != len(sampler.data_source)):
        return "its RandomSampler draws with replacement or a num_samples of its own"
    if type(sampler) not in (SequentialSampler, RandomSampler):
        return f"it has a custom sampler ({type(sampler).__name__})"
    return None


def shuffle_seed_of(loader: DataLoader) -> int | None:
    """The seed of a shuffling loader's own ``torch.Generator`` (``DataLoader(generator=...)``), if it has one.

    Returns:
        ``generator.initial_seed()``; ``None`` for a loader that does not shuffle or has no generator.
    """
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler) and sampler.generator is not None:
        return int(sampler.generator.initial_seed())
    return None


def distribute_loader(loader: DataLoader, *, train: bool, num_replicas: int, rank: int, seed: int) -> DataLoader:
    """A copy of ``loader`` that iterates only this rank's shard.

    The copy keeps every argument of the original (batch size, collate function, workers, pinning,
    ``drop_last``, generator...); only the sampler changes. Shuffling is kept: a ``RandomSampler`` becomes a
    shuffling distributed sampler, a ``SequentialSampler`` a non-shuffling one.

    Args:
        loader: a loader for which :func:`unshardable_reason` is ``None``.
        train: ``True``: ``DistributedSampler(drop_last=loader.drop_last)`` (pads to equal shards, or drops the
            tail with ``drop_last``); ``False``: :class:`DistributedEvalSampler` (no padding).
        num_replicas: number of processes.
        rank: this process's rank.
        seed: the shuffle seed; it must be the same on every rank.

    Returns:
        The new loader, of ``loader``'s class.

    Raises:
        TypeError: when ``loader``'s class cannot be rebuilt from a ``DataLoader``'s arguments (a subclass with
            other constructor arguments): give it a ``DistributedSampler`` yourself then.
    """
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: Sampler[int]
    if train:
        sampler = DistributedSampler(
            loader.dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=loader.drop_last,
        )
    else:
        sampler = DistributedEvalSampler(loader.dataset, num_replicas, rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    arguments: dict[str, Any] = {"sampler": sampler, "shuffle": False}
    for name in inspect.signature(DataLoader.__init__).parameters:
        if name not in ("self", "sampler", "shuffle", "batch_sampler") and hasattr(loader, name):
            arguments[name] = getattr(loader, name)
    try:
        return type(loader)(**arguments)
    except TypeError as error:
        raise TypeError(
            f"cannot rebuild the {type(loader).__name__} with a distributed sampler ({error}); give it "
            "sampler=torch.utils.data.DistributedSampler(dataset) yourself"
        ) from error
