"""The aggregate: the consistency boundary around a model and everything it needs to learn.

Follows torchsystem 1.4.9 (``torchsystem.domain.Aggregate``): an :class:`torch.nn.Module` (and an ``ABC``) holding
the network, criterion, optimizer and whatever else the task needs, with an identity, a ``phase``, an ``epoch``
whose every assignment but the first fires :meth:`Aggregate.onepoch`, and a queue of domain
:class:`~.events.Events`.

Beyond upstream, an aggregate has a default learner step. Given ``forward``, a ``criterion`` (or an overridden
``loss``) and an ``optimizer``, :meth:`Aggregate.fit` does zero-grad, forward, loss, :meth:`Aggregate.backward`,
step. ``backward`` is the seam through which a training strategy reaches inside the step (loss scaling for
``16-mixed``); an aggregate written as the seed writes it, calling ``loss.backward()`` itself, still trains.

The default step never gets in the way of what upstream allows: a submodule, parameter or buffer assigned under
one of its names (``self.loss = nn.MSELoss()``, ``self.fit = ...``) is what ``self.loss`` / ``self.fit`` return,
as in upstream, where those names are free. This is settled when the attribute is assigned (the module is also
kept in the instance ``__dict__``, where attribute lookup finds it before the class's method), so calls cost
nothing extra. A subclass's own method of that name still wins over a submodule, as it does upstream. Only
assignment does this: ``add_module("fit", module)`` is refused by torch (``KeyError: attribute 'fit' already
exists``), as for any name the class defines.
"""

from __future__ import annotations

import numbers
from abc import ABC
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module

from torchsystem_trainer.domain.events import Events
from torchsystem_trainer.domain.logged import LOG_OPTIONS, LoggedValue, LogSink, ReduceFx, check_log, loggable

__all__ = ["Aggregate", "Phase"]

Phase = Literal["train", "evaluation"]

_LEARNER_STEP = ("fit", "evaluate", "loss", "backward")
"""The names of the default learner step, which upstream's Aggregate leaves free for submodules."""


class Aggregate(Module, ABC):
    """Base class for aggregates: a model, its criterion, its optimizer, its identity and its events.

    Attributes:
        events: the aggregate's domain event queue.
        logged: the latest value of each name given to :meth:`log`, ``{name: value}`` (a detached tensor on its
            device, never read, or a ``float``): what a consumer reads when no Trainer runs the aggregate.
        epoch: optional; every assignment but the first calls :meth:`onepoch`. "The first" means: before it
            ``epoch`` was no attribute at all (not in the instance, not a registered buffer, not a class
            attribute), exactly as upstream's ``hasattr(self, 'epoch')`` test. It may be an ``int`` or a
            registered buffer; assigning a number to a buffer ``epoch`` fills a new tensor of the buffer's shape,
            dtype and device. The Trainer sets it to the number of epochs completed at the end of each epoch.

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
        # None means "not initialized" (as upstream): a plain value, so deepcopy, pickle, torch.save and spawned
        # processes keep it exactly (a sentinel object() would come back as another, "initialized" object)
        self._identity: Any = None
        self._backward: Callable[[Tensor], None] | None = None
        self._log_sink: LogSink | None = None
        self.logged: dict[str, LoggedValue] = {}

    # -- identity ---------------------------------------------------------------------------------------

    @property
    def id(self) -> Any:
        """The identity of the aggregate root. Subclasses may override it as a property (the seed returns
        ``gethash(self.nn)``).

        Raises:
            ValueError: when the identity was neither initialized nor overridden.
        """
        identity = self._identity
        if identity is None:
            raise ValueError(
                f"{type(self).__name__}.id is not initialized: call initialize(id) once, "
                "or override the id property"
            )
        return identity

    def initialize(self, id: Any) -> None:
        """Give the aggregate its identity, once.

        Args:
            id: any value but ``None`` identifying the aggregate root (a registry hash, a database key).

        Raises:
            ValueError: when ``id`` is ``None`` (upstream silently leaves the aggregate uninitialized then), or
                when the identity was already initialized; identities never change.
        """
        if id is None:
            raise ValueError(f"{type(self).__name__}.initialize: id=None is not an identity; pass a hash or a key")
        if self._identity is not None:
            raise ValueError(
                f"{type(self).__name__}.id is already initialized to {self._identity!r}; "
                f"cannot re-initialize it to {id!r}"
            )
        self._identity = id

    def is_initialized(self) -> bool:
        """Whether :meth:`initialize` was called. An overridden ``id`` property does not count (as upstream)."""
        return self._identity is not None

    # -- phase and epoch --------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """``'train'`` when the modules are in training mode, else ``'evaluation'``.

        Assigning ``'train'`` calls ``self.train()``, anything else ``self.eval()`` (as upstream, so a subclass's
        override of either runs), then :meth:`onphase`.
        """
        return "train" if self.training else "evaluation"

    @phase.setter
    def phase(self, value: str) -> None:
        if value == "train":
            self.train()
        else:
            self.eval()
        self.onphase()

    def onphase(self) -> None:
        """Hook called after every assignment of :attr:`phase`. Does nothing by default."""

    def onepoch(self) -> None:
        """Hook called after every assignment of ``epoch`` but the first. Does nothing by default; the seed
        commits the domain events here, so an enqueued ``StopIteration`` ends the fit."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "epoch":
            existed = hasattr(self, "epoch")  # upstream's test: an attribute, a buffer or a class attribute
            buffer = self.__dict__.get("_buffers", {}).get("epoch")
            if buffer is not None and isinstance(value, numbers.Number):
                value = torch.full_like(buffer, value)  # type: ignore[arg-type]
            super().__setattr__(name, value)
            if existed:
                self.onepoch()
            return
        if name == "bind_backward" and isinstance(value, Module | Tensor):
            raise TypeError(
                f"{type(self).__name__}.bind_backward is the method a training strategy calls; a "
                f"{type(value).__name__} assigned under that name would be unreachable: give it another name"
            )
        super().__setattr__(name, value)
        if name in _LEARNER_STEP:
            self._expose(name)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        if name in _LEARNER_STEP:
            self.__dict__.pop(name, None)

    def _expose(self, name: str) -> None:
        """Make a parameter, buffer or submodule registered under a learner-step name what ``self.<name>``
        returns, unless the subclass defines its own ``<name>``."""
        if getattr(type(self), name, None) is not _DEFAULTS[name]:
            return  # the subclass's own method wins over the submodule, as upstream's attribute lookup does
        for table in ("_parameters", "_buffers", "_modules"):
            registered = self.__dict__.get(table)
            if registered is not None and name in registered:
                self.__dict__[name] = registered[name]
                return

    # -- logging ----------------------------------------------------------------------------------------

    def log(
        self,
        name: str,
        value: Tensor | float,
        *,
        on_step: bool = False,
        on_epoch: bool = True,
        reduce_fx: ReduceFx = "mean",
        prog_bar: bool = False,
    ) -> None:
        """Record a value from inside :meth:`fit`, :meth:`evaluate` or ``predict`` (Lightning's
        ``LightningModule.log``, with its argument names and meanings).

        In a Trainer's phase the value joins the phase's results as ``"<phase>/<name>"`` (``train/<name>``,
        ``validation/<name>``, ``test/<name>``): reduced over the phase on the device and across processes, so
        ``EarlyStopping``, ``ModelCheckpoint``, ``History``, the loggers and the run store see it as any result.
        Unlike Lightning, the defaults do not depend on the phase: ``on_step=False, on_epoch=True`` everywhere
        (Lightning's ``training_step`` defaults to ``on_step=True, on_epoch=False``). ``Trainer.predict`` has no
        results: there (and outside a Trainer) only :attr:`logged` keeps the value. Nothing is read from the
        device here, nor per step by the Trainer.

        Args:
            name: the key, unique in the phase: not ``"loss"``/``"loss_step"`` (the Trainer's own loss) nor the name
                of a configured metric (the Trainer raises ``ValueError`` at the first such call of a phase).
            value: a tensor of one element (any device, dtype and shape with ``numel() == 1``; detached here) or a
                real number.
            on_step: also give each step's value, as ``"<phase>/<name>_step"``, which loggers write every
                ``log_every_n_steps`` steps (``Trainer.loop.step_values(phase)`` holds the latest batch's).
            on_epoch: reduce the phase's values into its results as ``"<phase>/<name>"``.
            reduce_fx: ``"mean"`` (weighted by the batch sizes, as Lightning's), ``"sum"``, ``"max"`` or ``"min"``.
            prog_bar: show the latest value on the progress bar.

        Raises:
            TypeError: for a name that is not a ``str``, a non-``bool`` flag, or a value that is neither a tensor nor
                a real number (a torchmetrics ``Metric``: give it to ``Trainer(metrics=...)``).
            ValueError: for an empty name, an unknown ``reduce_fx``, ``on_step=on_epoch=False``, a tensor of more
                than one element; in a Trainer's phase also for a reserved name or a name logged earlier in the
                phase with other options.
        """
        options = (on_step, on_epoch, reduce_fx, prog_bar)
        try:
            valid = options in LOG_OPTIONS and type(name) is str and name != ""
        except TypeError:  # an unhashable option
            valid = False
        # the common case checked here, in line (this runs per step): a valid call with a one-element real tensor
        if valid and type(value) is Tensor and value.numel() == 1 and not value.is_complex():
            if value.requires_grad:
                value = value.detach()
        else:
            owner = f"{type(self).__name__}.log"
            if not valid:
                check_log(owner, name, options)
            value = loggable(owner, name, value)
        self.logged[name] = value
        sink = self._log_sink
        if sink is not None:
            sink(name, value, options)  # type: ignore[arg-type]

    def bind_log(self, sink: LogSink | None) -> LogSink | None:
        """Send what :meth:`log` records to ``sink(name, value, options)`` as well (the Trainer binds one per
        phase); ``None`` unbinds it. A bound sink is neither pickled nor deep-copied with the aggregate.

        Returns:
            The sink bound until now (``None``: none), so that a caller can bind it again afterwards.
        """
        previous, self._log_sink = self._log_sink, sink
        return previous

    def __getstate__(self) -> dict[str, Any]:
        """The instance's state for ``pickle`` and ``copy.deepcopy``, without a bound log sink (it belongs to the
        run that bound it, in this process)."""
        state = dict(self.__dict__)
        state["_log_sink"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled aggregate; one pickled before :meth:`log` existed gets its attributes."""
        super().__setstate__(state)
        self.__dict__.setdefault("_log_sink", None)
        self.__dict__.setdefault("logged", {})

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


_DEFAULTS: dict[str, Any] = {name: Aggregate.__dict__[name] for name in _LEARNER_STEP}
