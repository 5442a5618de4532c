"""The compilation pipeline of the :class:`~examples.mnist.classifier.Classifier` (the seed's
``src/services/compilation.py``).

Steps, in order: build the aggregate from its parts, move it to the device, optionally ``torch.compile`` it, and
restore the epoch it had reached. The pipeline does not decide the device, whether to compile, nor where epochs
are stored: those are dependencies, placeholders here, bound by the application layer::

    compiler.dependency_overrides[device] = lambda: str(trainer.strategy.root_device)
    compiler.dependency_overrides[compile_enabled] = lambda: arguments.compile
    classifier = compiler.compile(nn, criterion, optimizer)

so the device is the one the Trainer's strategy chose, and the strategy's own ``setup`` (which moves the
aggregate again, idempotently) finds it already there.
"""

from __future__ import annotations

import logging

from torch.nn import Module
from torch.optim import Optimizer

from examples.mnist.classifier import Classifier
from torchsystem_trainer import Compiler, Depends

__all__ = ["build_classifier", "compile_classifier", "compile_enabled", "compiler", "device", "epoch",
           "move_to_device", "restore_epoch"]

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
        0: a new classifier. Override it to read the epoch from a database or a checkpoint (keyed by
        ``classifier.id``); ``Trainer.fit(ckpt_path=...)`` restores the whole training state instead.
    """
    return 0


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
def restore_epoch(classifier: Classifier, epoch: int = Depends(epoch)) -> Classifier:
    """Set the epoch the classifier had reached (the seed's ``get_current_epoch``).

    Assigning the epoch fires :meth:`Classifier.onepoch`, which commits the (still empty) domain events.

    Args:
        classifier: the aggregate.
        epoch: injected; epochs already trained (>= 0).

    Returns:
        The same classifier, at ``epoch``.

    Raises:
        ValueError: for a negative ``epoch``.
    """
    if epoch < 0:
        raise ValueError(f"restore_epoch: epoch={epoch!r} is invalid; valid: an int >= 0")
    classifier.epoch = epoch
    return classifier
