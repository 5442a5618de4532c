"""The compilation pipeline of the :class:`~examples.mnist.classifier.Classifier` (the seed's
``src/services/compilation.py``).

Steps, in order: build the aggregate from its parts, move it to the device, optionally ``torch.compile`` it, set
the epoch it had reached (the seed's ``get_current_epoch``: from the run store, ``Tracker.current_epoch(
classifier.id)``), and restore its weights from the newest checkpoint the store recorded for it. The pipeline does
not decide the device, whether to compile, nor where epochs are stored: those are dependencies, placeholders here,
bound by the application layer::

    compiler.dependency_overrides[device] = lambda: str(trainer.strategy.root_device)
    compiler.dependency_overrides[compile_enabled] = lambda: arguments.compile
    compiler.dependency_overrides[store] = lambda: Tracker("sqlite:///runs/runs.db")
    classifier = compiler.compile(nn, criterion, optimizer)

so the device is the one the Trainer's strategy chose, and the strategy's own ``setup`` (which moves the
aggregate again, idempotently) finds it already there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from torch.nn import Module
from torch.optim import Optimizer

from examples.mnist.classifier import Classifier
from torchsystem_trainer import Compiler, Depends
from torchsystem_trainer.checkpoint import load_aggregate_state, load_file

if TYPE_CHECKING:
    from torchsystem_trainer.tracking import Tracker

__all__ = ["build_classifier", "compile_classifier", "compile_enabled", "compiler", "device", "epoch",
           "get_current_epoch", "move_to_device", "restore_weights", "store"]

logger = logging.getLogger(__name__)

compiler = Compiler[Classifier]()


def device() -> str:
    """Where the classifier lives: ``"cpu"``, ``"cuda:0"``... Bound in the application layer (to the strategy's
    ``root_device``).

    Raises:
        NotImplementedError: always; override it with ``compiler.dependency_overrides[device] = ...``.
    """
    raise NotImplementedError("the device is decided by the application layer (the Trainer's strategy)")


def compile_enabled() -> bool:
    """Whether to ``torch.compile`` the classifier. Off unless the application layer says otherwise (``--compile``).

    Returns:
        ``False``.
    """
    return False


def epoch() -> int:
    """The number of epochs the classifier already trained, from wherever the application stores it.

    Returns:
        0: a new classifier. Used when no run store is bound (:func:`store`); ``Trainer.fit(ckpt_path=...)``
        restores the whole training state instead.
    """
    return 0


def store() -> Tracker | None:
    """The run store to read the classifier's epoch and newest checkpoint from, keyed by ``classifier.id``.

    Returns:
        ``None``: no store; the application layer binds a ``Tracker`` (``--store``, the default).
    """
    return None


@compiler.step
def build_classifier(nn: Module, criterion: Module, optimizer: Optimizer) -> Classifier:
    """Group the parts into the aggregate.

    Args:
        nn: the network, [batch, features] float32 -> [batch, classes] logits.
        criterion: the loss.
        optimizer: the optimizer of ``nn``'s parameters.

    Returns:
        The :class:`Classifier`, at epoch 0.
    """
    logger.info("building a Classifier of %s", type(nn).__name__)
    return Classifier(nn, criterion, optimizer)


@compiler.step
def move_to_device(classifier: Classifier, device: str = Depends(device)) -> Classifier:
    """Move the classifier's parameters and buffers to ``device``, in place.

    The optimizer keeps working: ``Module.to`` moves each parameter's data and keeps the ``Parameter`` objects
    the optimizer holds (its state is empty before the first step).

    Args:
        classifier: the aggregate.
        device: injected; where to move it.

    Returns:
        The same classifier, on ``device``.

    Raises:
        NotImplementedError: when the application layer did not bind :func:`device`.
    """
    logger.info("moving classifier %s to %s", classifier.id, device)
    return classifier.to(device)


@compiler.step
def compile_classifier(classifier: Classifier, enabled: bool = Depends(compile_enabled)) -> Classifier:
    """``torch.compile`` the classifier's forward when enabled, in place (``Module.compile``).

    Compiling in place keeps the object a ``Classifier``, with its ``fit``/``evaluate`` and identity; wrapping it
    in ``torch.compile(classifier)`` would hide them behind an ``OptimizedModule``.

    Args:
        classifier: the aggregate.
        enabled: injected; whether to compile.

    Returns:
        The same classifier.
    """
    if enabled:
        logger.info("compiling classifier %s", classifier.id)
        classifier.compile()
    return classifier


@compiler.step
def get_current_epoch(
    classifier: Classifier, epoch: int = Depends(epoch), store: Tracker | None = Depends(store)
) -> Classifier:
    """Set the epoch the classifier had reached: the seed's ``get_current_epoch``, "implemented with some database
    query using the classifier.id" (``Tracker.current_epoch``), or :func:`epoch` without a store.

    Assigning the epoch fires :meth:`Classifier.onepoch`, which commits the (still empty) domain events.

    Args:
        classifier: the aggregate.
        epoch: injected; epochs already trained when there is no store (>= 0).
        store: injected; the run store, or ``None``.

    Returns:
        The same classifier, at its epoch.

    Raises:
        ValueError: for a negative ``epoch``.
    """
    current = epoch if store is None else store.current_epoch(classifier.id)
    if current < 0:
        raise ValueError(f"get_current_epoch: epoch={current!r} is invalid; valid: an int >= 0")
    classifier.epoch = current
    return classifier


@compiler.step
def restore_weights(classifier: Classifier, store: Tracker | None = Depends(store)) -> Classifier:
    """Load the weights and optimizer state of the newest checkpoint the store recorded for this classifier (by
    ``classifier.id``), so a second run continues the same model. The checkpoint's epoch wins over the store's when
    they differ (a warning says so): weights and epoch then agree.

    Args:
        classifier: the aggregate, at the store's epoch.
        store: injected; the run store, or ``None`` (nothing to restore).

    Returns:
        The same classifier; ``classifier.restored_from`` is the checkpoint's path, or ``None``.

    Raises:
        CheckpointError: for a recorded checkpoint that cannot be loaded into this classifier.
    """
    classifier.restored_from = None
    if store is None or classifier.epoch == 0:
        return classifier
    files = [c for c in store.checkpoints(model=classifier.id) if Path(c.path).is_file()]
    if not files:
        logger.warning("classifier %s is at epoch %d but no checkpoint of it exists: its weights start fresh",
                       classifier.id, classifier.epoch)
        return classifier
    newest = files[-1]
    expected = classifier.epoch
    device = next(classifier.parameters()).device
    load_aggregate_state(classifier, load_file(newest.path, map_location=device)["aggregate"], newest.path)
    if classifier.epoch != expected:
        logger.warning("the newest checkpoint of classifier %s is of epoch %d, the store says %d: continuing from "
                       "the checkpoint", classifier.id, classifier.epoch, expected)
    classifier.restored_from = newest.path
    return classifier
