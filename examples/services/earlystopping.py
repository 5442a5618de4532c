"""The early-stopping service (the seed's ``src/services/earlystopping.py``).

A :class:`~torchsystem_trainer.services.Consumer` forwards every metric of a finished pass to a
:class:`~torchsystem_trainer.services.Subscriber`, on the metric's name as topic. A subscribed handler that
decides the training is over raises ``StopIteration``; the consumer enqueues it in the model's domain events,
and the aggregate raises it from its ``onepoch`` hook when the application advances the epoch. Exceptions are a
good way to propagate a decision backwards through the system without the services knowing each other.

The thresholds are the seed's (training stops at a loss below 0.001 or an accuracy above 0.995, in any phase),
as dependencies the application layer may override::

    subscriber.dependency_overrides[target_accuracy] = lambda: 0.99
"""

from __future__ import annotations

from examples.services.domain import Metric
from examples.services.training import Trained, Validated
from torchsystem_trainer import Depends
from torchsystem_trainer.services import Consumer, Subscriber

__all__ = ["consumer", "deliver_metrics", "on_high_accuracy", "on_low_loss", "subscriber", "target_accuracy",
           "target_loss"]

subscriber = Subscriber("earlystopping")
consumer = Consumer("earlystopping")


def target_loss() -> float:
    """Stop when a pass's loss falls below this.

    Returns:
        0.001, the seed's value.
    """
    return 0.001


def target_accuracy() -> float:
    """Stop when a pass's accuracy rises above this.

    Returns:
        0.995, the seed's value.
    """
    return 0.995


@consumer.handler
def deliver_metrics(event: Trained | Validated) -> None:
    """Publish each metric on its name; turn a ``StopIteration`` into a domain event of the model.

    Args:
        event: a finished training or validation pass.
    """
    for metric in event.metrics:
        try:
            subscriber.receive(metric, metric.name)
        except StopIteration:
            if StopIteration not in event.model.events.queue:  # one is enough to stop
                event.model.events.enqueue(StopIteration)


@subscriber.subscribe("loss")
def on_low_loss(metric: Metric, target: float = Depends(target_loss)) -> None:
    """Stop on a low loss.

    Args:
        metric: the ``loss`` of a pass.
        target: injected; the threshold.

    Raises:
        StopIteration: when ``metric.value < target``.
    """
    if metric.value < target:
        raise StopIteration


@subscriber.subscribe("accuracy")
def on_high_accuracy(metric: Metric, target: float = Depends(target_accuracy)) -> None:
    """Stop on a high accuracy.

    Args:
        metric: the ``accuracy`` of a pass.
        target: injected; the threshold.

    Raises:
        StopIteration: when ``metric.value > target``.
    """
    if metric.value > target:
        raise StopIteration
