"""The aggregate: the consistency boundary around a model and everything it needs to learn.

Follows the TorchSystem seed (``torchsystem.domain.Aggregate``): an :class:`torch.nn.Module` holding the network,
criterion, optimizer and whatever else the task needs, with an identity, a ``phase``, an ``epoch`` whose
assignment fires :meth:`Aggregate.onepoch`, and a queue of domain :class:`~.events.Events`.

Beyond the seed, an aggregate has a default learner step. Given ``forward``, a ``criterion`` (or an overridden
``loss``) and an ``optimizer``, :meth:`Aggregate.fit` does zero-grad, forward, loss, :meth:`Aggregate.backward`,
step. ``backward`` is the seam through which a training strategy reaches inside the step (loss scaling for
``16-mixed``); an aggregate written as the seed writes it, calling ``loss.backward()`` itself, still trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor
from torch.nn import Module

from torchsystem_trainer.domain.events import Events

__all__ = ["Aggregate", "Phase"]

Phase = Literal["train", "evaluation"]
_UNSET: Any = object()


class Aggregate(Module):
    """Base class for aggregates: a model, its criterion, its optimizer, its identity and its events.

    Attributes:
        events: the aggregate's domain event queue.
        epoch: optional; when the subclass has set it once, every later assignment calls :meth:`onepoch`.
            The Trainer advances it by one at the end of each training epoch (0 before the first).

    Example:
        >>> class Classifier(Aggregate):
        ...     def __init__(self, nn, criterion, optimizer):
        ...         super().__init__()
        ...         self.epoch = 0
        ...         self.nn, self.criterion, self.optimizer = nn, criterion, optimizer
        ...     def forward(self, inputs):
        ...         return self.nn(inputs)
    """

    def __init__(self) -> None:
        super().__init__()
        self.events = Events()
        self._identity: Any = _UNSET
        self._backward: Callable[[Tensor], None] | None = None

    # -- identity ---------------------------------------------------------------------------------------

    @property
    def id(self) -> Any:
        """The identity of the aggregate root. Subclasses may override it as a property (the seed returns
        ``gethash(self.nn)``).

        Raises:
            ValueError: when the identity was neither initialized nor overridden.
        """
        if self._identity is _UNSET:
            raise ValueError(
                f"{type(self).__name__}.id is not initialized: call initialize(id) once, "
                "or override the id property"
            )
        return self._identity

    def initialize(self, id: Any) -> None:
        """Give the aggregate its identity, once.

        Args:
            id: any value identifying the aggregate root (a registry hash, a database key).

        Raises:
            ValueError: when the identity was already initialized; identities never change.
        """
        if self._identity is not _UNSET:
            raise ValueError(
                f"{type(self).__name__}.id is already initialized to {self._identity!r}; "
                f"cannot re-initialize it to {id!r}"
            )
        self._identity = id

    def is_initialized(self) -> bool:
        """Whether :meth:`initialize` was called. An overridden ``id`` property does not count."""
        return self._identity is not _UNSET

    # -- phase and epoch --------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """``'train'`` when the modules are in training mode, else ``'evaluation'``.

        Assigning ``'train'`` puts every submodule in training mode, anything else in evaluation mode
        (as the seed does), then calls :meth:`onphase`.
        """
        return "train" if self.training else "evaluation"

    @phase.setter
    def phase(self, value: str) -> None:
        self.train(value == "train")
        self.onphase()

    def onphase(self) -> None:
        """Hook called after every assignment of :attr:`phase`. Does nothing by default."""

    def onepoch(self) -> None:
        """Hook called after every assignment of ``epoch`` but the first. Does nothing by default; the seed
        commits the domain events here, so an enqueued ``StopIteration`` ends the fit."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "epoch" and "epoch" in self.__dict__:
            super().__setattr__(name, value)
            self.onepoch()
        else:
            super().__setattr__(name, value)

    # -- learner step -----------------------------------------------------------------------------------

    def bind_backward(self, backward: Callable[[Tensor], None] | None) -> None:
        """Route :meth:`backward` through ``backward`` (a training strategy does this in its ``setup``);
        ``None`` restores plain ``loss.backward()``."""
        self._backward = backward

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` through whatever the training strategy bound (loss scaling for ``16-mixed``).

        Call this instead of ``loss.backward()`` in a custom :meth:`fit` to support every precision.

        Args:
            loss: ``[]`` floating scalar with a grad function.
        """
        if self._backward is None:
            loss.backward()
        else:
            self._backward(loss)

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """The loss of ``outputs`` against ``targets``: ``self.criterion(outputs, targets)`` by default.

        Args:
            outputs: what :meth:`forward` returned, e.g. ``[batch, classes] float32`` logits.
            targets: e.g. ``[batch] int64`` class indices.

        Returns:
            ``[]`` floating scalar.

        Raises:
            NotImplementedError: when the aggregate has no ``criterion`` and does not override ``loss``.
        """
        criterion = self._modules.get("criterion", self.__dict__.get("criterion"))
        if criterion is None:
            raise NotImplementedError(
                f"{type(self).__name__}.loss: set self.criterion or override loss(outputs, targets)"
            )
        return criterion(outputs, targets)  # type: ignore[no-any-return]

    def fit(self, inputs: Any, targets: Any) -> tuple[Any, Tensor]:
        """One learner step: ``optimizer.zero_grad()``, forward, :meth:`loss`, :meth:`backward`,
        ``optimizer.step()``.

        Args:
            inputs: the batch's inputs, passed to :meth:`forward`, e.g. ``[batch, features] float32``.
            targets: the batch's targets, passed to :meth:`loss`.

        Returns:
            ``(outputs, loss)``: the forward's outputs (the predictions metrics see) and the ``[]`` loss.

        Raises:
            NotImplementedError: when the aggregate has no ``optimizer`` attribute, or no criterion/loss.
        """
        optimizer = self.__dict__.get("optimizer")
        if optimizer is None:
            raise NotImplementedError(
                f"{type(self).__name__}.fit: the default learner step needs self.optimizer; "
                "set it or override fit(inputs, targets)"
            )
        optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.backward(loss)
        optimizer.step()
        return outputs, loss

    def evaluate(self, inputs: Any, targets: Any) -> tuple[Any, Tensor]:
        """One evaluation step: forward and :meth:`loss`. The Trainer calls it under
        ``torch.inference_mode()`` with the aggregate in the ``'evaluation'`` phase.

        Args:
            inputs: the batch's inputs, passed to :meth:`forward`.
            targets: the batch's targets, passed to :meth:`loss`.

        Returns:
            ``(outputs, loss)``.

        Raises:
            NotImplementedError: when the aggregate has no criterion and does not override ``loss``.
        """
        outputs = self(inputs)
        return outputs, self.loss(outputs, targets)
