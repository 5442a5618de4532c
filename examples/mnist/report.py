"""A seed-style consumer that prints each epoch's results: the Trainer accepts any ``Consumer`` as a callback.

It is written as the seed's tensorboard consumer is (``src/services/tensorboard.py``): a module-level
:class:`~torchsystem_trainer.services.Consumer`, a handler routed by its first parameter's annotation, and the
output as a dependency that the application layer may override::

    report.consumer.dependency_overrides[report.output] = lambda: my_logger.info

By default lines go through ``tqdm.write``, which prints above any progress bar instead of breaking it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tqdm import tqdm

from torchsystem_trainer import Depends
from torchsystem_trainer.events import Iterated
from torchsystem_trainer.services import Consumer

__all__ = ["consumer", "format_results", "output", "print_epoch"]

consumer = Consumer("report")


def output() -> Callable[[str], None]:
    """Where lines go.

    Returns:
        ``tqdm.write``.
    """
    return tqdm.write


def format_results(results: Mapping[str, float]) -> str:
    """Format results as ``name=value`` pairs, in the order given.

    Args:
        results: e.g. ``{"train/loss": 0.31, "validation/accuracy": 0.95}``.

    Returns:
        ``"train/loss=0.3100  validation/accuracy=0.9500"``.
    """
    return "  ".join(f"{name}={value:.4f}" for name, value in results.items())


@consumer.handler
def print_epoch(event: Iterated, write: Callable[[str], None] = Depends(output)) -> None:
    """Print one line per epoch: its 0-based number (as the progress bar's ``Epoch N``) and every phase's results.

    Args:
        event: the end of an epoch over all loaders; ``results`` are ``"<phase>/<name>"`` keys.
        write: injected; prints one line.
    """
    write(f"epoch {event.epoch}: {format_results(event.results)}")
