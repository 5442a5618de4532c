"""Where the training phase of an epoch stands, and how a resumed fit gets back there without replaying data.

The problem (Lightning #19815, Accelerate #2016, Keras ``BackupAndRestore``): a checkpoint written in the middle of
an epoch must continue with the very batches the uninterrupted run would have trained next, with the same random
draws, without reading the batches already trained. With ``shuffle=True`` the order comes from random draws made
when the epoch's iterator starts, and dropout and augmentation draw from the same generators.

How it is done, once per training phase (nothing per batch):

* **At every epoch start**, just before the loader's iterator is created, :class:`TrainPosition` records the
  random generators' states (:mod:`~torchsystem_trainer.checkpoint.rng`: Python, NumPy, torch CPU, CUDA) and the
  states of the loader's own ``torch.Generator`` objects. A checkpoint written in that epoch carries them, next to
  the number of batches consumed and the generators' states at the checkpoint's moment.
* **On a mid-epoch resume** of a map-style ``torch.utils.data.DataLoader``, the generators are set to the epoch-start
  states, the iterator is created with its index sampler wrapped by :class:`SkipFirst`, which on its first use draws
  and discards the first ``consumed`` index batches (the sampler's draws happen, in the same order: the iterator's
  base seed when it is created, a ``RandomSampler``'s seed when it is first pulled) without loading their samples,
  and then sets the generators to the checkpoint's moment before the first remaining batch is loaded. The batches
  that follow, the dropout masks and the augmentation draws of ``num_workers=0`` are the uninterrupted run's.
  The wrapper is put in place for the one ``iter()`` call only; the user's loader object is otherwise untouched
  (no rebuilt ``DataLoader``, so subclasses and every constructor argument keep working).
* **Any other iterable** (and a ``DataLoader`` over an ``IterableDataset``) is fast-forwarded: the generators are
  set to the epoch start, ``consumed`` batches are read and dropped, then the generators are set to the checkpoint's
  moment. That is exact when the iterable yields the same batches from the same generator states (a list always
  does); a warning says so for anything but a list or tuple.
* **Persistent workers** (``persistent_workers=True``) keep one iterator for the whole run, which draws its base
  seed only when it is created. A resumed run creates it again, so that creation is given a throw-away generator
  and the global generators see the same draws as in the uninterrupted run.

Not reproduced: random draws made *inside* ``num_workers > 0`` worker processes (augmentation in the dataset), which
live in those processes; a sampler that draws from a generator of its own that is not a ``torch.Generator`` held
as ``generator`` (a NumPy ``default_rng``), which cannot be seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from torchsystem_trainer.checkpoint.rng import (
    RNGState,
    generator_states,
    load_generator_states,
    load_rng_state,
    rng_state,
)

__all__ = ["EpochStart", "SkipFirst", "TrainPosition", "is_persistent", "open_skipping"]

_END = object()


@dataclass(frozen=True)
class EpochStart:
    """The generators' states right before an epoch's training iterator was created.

    Attributes:
        rng: the global generators (:func:`~torchsystem_trainer.checkpoint.rng.rng_state`).
        generators: the loader's own ``torch.Generator`` states
            (:func:`~torchsystem_trainer.checkpoint.rng.generator_states`).
    """

    rng: RNGState
    generators: list[torch.Tensor]

    def state_dict(self) -> dict[str, Any]:
        """As plain data: ``{"rng": ..., "generators": [...]}``."""
        return {"rng": self.rng, "generators": list(self.generators)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpochStart:
        """Build one from :meth:`state_dict`'s output.

        Raises:
            KeyError: when a field is missing.
        """
        return cls(state["rng"], list(state["generators"]))


class SkipFirst:
    """An index sampler (or batch sampler) whose first iteration drops the first ``skip`` items of ``inner``'s,
    then calls ``on_skipped``; later iterations are ``inner``'s, unchanged.

    Iterating is lazy: nothing is drawn until the first item is asked for, exactly as ``RandomSampler`` and
    ``BatchSampler`` behave, so the random draws happen at the same moments as without the wrapper.

    Args:
        inner: the loader's ``batch_sampler`` (or ``sampler`` when it has no batch sampler).
        skip: how many items to drop (>= 0).
        on_skipped: called once, after dropping and before the first item is given out.
    """

    def __init__(self, inner: Any, skip: int, on_skipped: Callable[[], None]) -> None:
        self.inner, self.skip, self.on_skipped = inner, skip, on_skipped
        self._pending = True

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.inner)
        if self._pending:
            self._pending = False
            for _ in range(self.skip):
                if next(iterator, _END) is _END:
                    break
            self.on_skipped()
        yield from iterator

    def __len__(self) -> int:
        return max(len(self.inner) - (self.skip if self._pending else 0), 0)


def is_persistent(loader: Any) -> bool:
    """Whether ``loader`` is a ``DataLoader`` that keeps its worker processes (and iterator) between epochs."""
    return isinstance(loader, DataLoader) and bool(loader.persistent_workers) and loader.num_workers > 0


# Private DataLoader attributes, used because torch offers no public way to do the same (checked on torch 2.2 to
# 2.13): a persistent-workers DataLoader keeps its iterator in ``_iterator`` and reuses it (and the index sampler
# that iterator holds, ``_index_sampler``) for every later ``iter()``. To resume mid-epoch without loading the
# skipped samples, the first iterator of a resumed fit must be a new one over a wrapped sampler, and later epochs
# must use the loader's own sampler again. Each access is checked, so a torch that renames them fails loudly here
# instead of resuming inexactly.


def _require(obj: Any, name: str, what: str) -> None:
    if not hasattr(obj, name):
        raise RuntimeError(
            f"torch {torch.__version__}: {what} has no attribute {name!r}, which exact mid-epoch resumption of a "
            f"persistent-workers DataLoader relies on (torchsystem_trainer.checkpoint.resume); please report it"
        )


def _persistent_iterator(loader: DataLoader[Any]) -> Any:
    """The iterator a persistent-workers ``DataLoader`` keeps between epochs (``None`` before the first)."""
    _require(loader, "_iterator", "DataLoader")
    return loader._iterator


def _map_style(loader: Any) -> bool:
    return isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)


def open_skipping(
    loader: Any, skip: int, on_skipped: Callable[[], None], create: Callable[[Any], Iterator[Any]] = iter
) -> Iterator[Any]:
    """An iterator over ``loader`` positioned after its first ``skip`` batches.

    A map-style ``DataLoader`` skips index batches without loading them (:class:`SkipFirst` in place of its
    ``batch_sampler``, or ``sampler`` without automatic batching, for the ``create`` call only); anything else is
    read and dropped (see the module docstring).

    Args:
        loader: the training loader.
        skip: batches already consumed in this epoch (>= 1).
        on_skipped: called once, after the skipped batches were drawn and before the next one is loaded.
        create: makes the iterator (``iter``, or a caller's wrapper of it).

    Returns:
        The iterator; its first batch is the loader's batch of 0-based index ``skip``.

    Warns:
        UserWarning: when batches are read and dropped from an iterable that is not a list or tuple: the resumed
            run is exact only if it yields the same batches from the same random state.
    """
    if _map_style(loader):
        attribute = "batch_sampler" if loader.batch_sampler is not None else "sampler"
        original = getattr(loader, attribute)
        wrapper = SkipFirst(original, skip, on_skipped)
        if is_persistent(loader) and _persistent_iterator(loader) is not None:
            loader._iterator = None  # a persistent iterator left by an earlier fit: let it shut down its workers
        object.__setattr__(loader, attribute, wrapper)  # DataLoader guards these after __init__; put back below
        try:
            iterator = create(loader)
        finally:
            object.__setattr__(loader, attribute, original)
        if is_persistent(loader):
            # Later epochs of a persistent iterator draw from the index sampler it was created with.
            _require(iterator, "_index_sampler", "a DataLoader iterator")
            iterator._index_sampler = original  # type: ignore[attr-defined]
        return iterator
    if not isinstance(loader, (list, tuple)):
        kind = "a DataLoader over an IterableDataset" if isinstance(loader, DataLoader) else type(loader).__name__
        warnings.warn(
            f"resuming in the middle of an epoch: the training loader ({kind}) cannot skip batches without reading "
            f"them, so its first {skip} batches are read and dropped; the run continues exactly only if it yields "
            f"the same batches from the same random state (a map-style DataLoader skips them without loading)",
            stacklevel=4,
        )
    iterator = create(loader)
    for _ in range(skip):
        if next(iterator, _END) is _END:
            break
    on_skipped()
    return iterator


@dataclass
class _Pending:
    consumed: int
    epoch_start: EpochStart | None
    rng: RNGState | None  # the global generators at the checkpoint's moment (None: a file without them)
    generators: list[torch.Tensor]
    saved: dict[str, Any]  # what load_state_dict was given, for a checkpoint written before open


class TrainPosition:
    """The training loader's side of a fit's position: kept by the Trainer, saved in checkpoints.

    The Trainer calls :meth:`open` once per training phase, in place of ``iter(loader)``.

    Attributes:
        epoch_start: the current epoch's :class:`EpochStart` (``None`` before the first).
        persistent: whether a persistent-workers iterator of the training loader has been created in this run
            (resumes included), so that creating one again must not draw a base seed.
    """

    def __init__(self) -> None:
        self.epoch_start: EpochStart | None = None
        self.persistent = False
        self._pending: _Pending | None = None

    def open(self, loader: Any, consumed: int) -> Iterator[Any]:
        """Record the epoch start and create the epoch's iterator; after :meth:`load_state_dict`, put the loader
        where the checkpoint was instead.

        Args:
            loader: the training loader.
            consumed: batches of this epoch already trained (``progress.batch``; > 0 only on a mid-epoch resume).

        Returns:
            The iterator; its first batch has 0-based index ``consumed``.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            load_generator_states(loader, pending.generators, "the 'train' loader")
        if pending is None or consumed == 0 or pending.epoch_start is None:
            self.epoch_start = EpochStart(rng_state(), generator_states(loader))
            return self._create(loader)
        self.epoch_start = pending.epoch_start
        moment = pending.rng if pending.rng is not None else rng_state()
        load_rng_state(pending.epoch_start.rng)
        return open_skipping(loader, consumed, lambda: load_rng_state(moment), self._create)

    def retake_moment(self) -> None:
        """After :meth:`load_state_dict`, work the uninterrupted run did between the checkpoint and its next batch
        (a validation due after the checkpoint's batch) has just run again and advanced the global generators as it
        did then: the next :meth:`open` puts the generators back to their state at the time it is called, rather than
        to the checkpoint's moment. Nothing happens when no resume is pending."""
        if self._pending is not None:
            self._pending.rng = None

    def _create(self, loader: Any) -> Iterator[Any]:
        """``iter(loader)``; a persistent iterator that the uninterrupted run would still have gets a throw-away
        generator for its base seed, so that creating it again draws nothing from the global generators."""
        persistent = is_persistent(loader)
        protect = persistent and self.persistent and _persistent_iterator(loader) is None
        self.persistent = self.persistent or persistent
        if not protect:
            return iter(loader)
        generator = loader.generator
        loader.generator = torch.Generator()
        try:
            return iter(loader)
        finally:
            loader.generator = generator

    def state_dict(self, loader: Any, consumed: int) -> dict[str, Any]:
        """The position as plain data.

        Args:
            loader: the training loader (for its generators' states now).
            consumed: batches of the current epoch already trained.

        Returns:
            ``{"epoch_start": EpochStart.state_dict() or None (when consumed == 0), "generators": [states now],
            "rng": the global generators now (when consumed > 0) or None, "persistent": bool}``: the skipped
            batches are drawn from the epoch start's generators, then the generators are put back to this moment.
            Between :meth:`load_state_dict` and :meth:`open` (a validation due at the restored position runs
            first, and a checkpoint may be written then), the restored position, the loader not having moved.
        """
        pending = self._pending
        if pending is not None:  # restored and not yet opened (a checkpoint written by a validation run first)
            saved = pending.saved
            return {
                "epoch_start": saved["epoch_start"] if consumed > 0 else None,
                "generators": list(saved["generators"]),
                "rng": (pending.rng if pending.rng is not None else rng_state()) if consumed > 0 else None,
                "persistent": self.persistent,
            }
        mid_epoch = consumed > 0 and self.epoch_start is not None
        return {
            "epoch_start": self.epoch_start.state_dict() if mid_epoch else None,  # type: ignore[union-attr]
            "generators": generator_states(loader),
            "rng": rng_state() if mid_epoch else None,
            "persistent": self.persistent,
        }

    def load_state_dict(self, state: dict[str, Any], rng: RNGState | None, consumed: int) -> None:
        """Arrange for the next :meth:`open` to continue where ``state`` was saved.

        Args:
            state: what :meth:`state_dict` returned.
            rng: the global generators' states at the checkpoint's moment (``state["rng"]``); ``None``: take them
                when :meth:`open` is called.
            consumed: batches of the epoch already trained (by this process: fewer or more than saved when the
                number of processes changed).

        Raises:
            KeyError: when a field is missing.
        """
        start = state["epoch_start"]
        epoch_start = None if start is None else EpochStart.from_state_dict(start)
        generators = epoch_start.generators if consumed > 0 and epoch_start is not None else state["generators"]
        self.persistent = bool(state["persistent"])
        self._pending = _Pending(consumed, epoch_start, rng, list(generators), dict(state))
