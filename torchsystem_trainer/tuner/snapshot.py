"""Everything a tool that trains on the side must put back so that it leaves no trace (Lightning's issue #6675:
its learning-rate finder left the weights changed).

A :class:`TrainingSnapshot` copies, before the tool runs, the aggregate's whole state (modules, optimizers, LR
schedulers, ``epoch``: :func:`~torchsystem_trainer.checkpoint.aggregate_state`), the training mode of each of its
modules, the global random generators, the loaders' ``torch.Generator`` states and samplers' epochs, and the
strategy's state (the fp16 loss scaler); :meth:`TrainingSnapshot.restore` puts them back, bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from torch.nn import Module

from torchsystem_trainer.checkpoint import (
    aggregate_state,
    generator_states,
    load_aggregate_state,
    load_generator_states,
    load_rng_state,
    rng_state,
)

__all__ = ["TrainingSnapshot"]

_UNSET = object()


class TrainingSnapshot:
    """A deep copy of the training state an aggregate, its loaders and a strategy hold now.

    Args:
        aggregate: the aggregate.
        loaders: the loaders the tool will iterate.
        strategy: the strategy it will run on (its ``state_dict``/``load_state_dict``), or ``None``.
    """

    def __init__(self, aggregate: Module, loaders: Iterable[Any] = (), strategy: Any = None) -> None:
        self.aggregate = aggregate
        self.state = copy.deepcopy(aggregate_state(aggregate))
        self.epoch = aggregate.__dict__.get("epoch", _UNSET)
        self.training = [module.training for module in aggregate.modules()]
        self.rng = rng_state()
        self.loaders = list(loaders)
        self.generators = [generator_states(loader) for loader in self.loaders]
        self.sampler_epochs = [getattr(getattr(loader, "sampler", None), "epoch", None) for loader in self.loaders]
        # a persistent-workers DataLoader keeps the iterator the tool creates, and a later fit would then not draw
        # the base seed it draws when creating one: the tool's iterator is dropped (DataLoader has no public way)
        self.iterators = [getattr(loader, "_iterator", _UNSET) for loader in self.loaders]
        self.strategy = strategy
        self.strategy_state = None if strategy is None else copy.deepcopy(strategy.state_dict())

    def restore(self) -> None:
        """Put everything back as it was when the snapshot was taken.

        Raises:
            CheckpointError: when the aggregate's parameters changed shape in between (nothing is changed then).
        """
        aggregate = self.aggregate
        load_aggregate_state(aggregate, copy.deepcopy(self.state), "the snapshot")
        if self.epoch is _UNSET:
            aggregate.__dict__.pop("epoch", None)
        for module, training in zip(aggregate.modules(), self.training, strict=False):
            module.training = training
        for loader, states, epoch, iterator in zip(
            self.loaders, self.generators, self.sampler_epochs, self.iterators, strict=True
        ):
            load_generator_states(loader, states, "a loader")
            if epoch is not None:
                loader.sampler.epoch = epoch
            if iterator is None and getattr(loader, "_iterator", None) is not None:
                loader._iterator = None  # see __init__
        if self.strategy is not None:
            self.strategy.load_state_dict(copy.deepcopy(self.strategy_state))
        load_rng_state(self.rng)
