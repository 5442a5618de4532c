"""The training service (the seed's ``src/services/training.py``): stateless handlers that produce events.

The handlers only orchestrate: they move batches to the injected device, call the aggregate's ``fit`` or
``evaluate``, feed the metrics, and dispatch what happened. Who listens (TensorBoard, early stopping, a printer)
is decided by the application layer, which registers consumers on :data:`producer`.

Compared with the seed's listing: ``iterate`` runs each loader once (the seed's repeats the last phase),
``validate`` dispatches ``Validated`` (the seed's dispatches ``Trained``), the events carry the computed metrics
(the seed passes the ``Metrics`` accumulator), and a ``test`` handler evaluates on the test data without
touching the validation consumers.

Events, in order, for one ``iterate`` over ``[("train", ...), ("validation", ...)]``::

    Trained(model, loader, metrics)      # after the training pass
    Validated(model, loader, metrics)    # after the validation pass
    Iterated(model, loaders)             # after every loader ran once
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import inference_mode

from examples.services.domain import Loader, Metric, Metrics, Model
from torchsystem_trainer import Depends
from torchsystem_trainer.services import Producer, Service, event

__all__ = ["Iterated", "Tested", "Trained", "Validated", "device", "iterate", "producer", "service", "test", "train",
           "validate"]

service = Service("training")
producer = Producer()


@event(frozen=True)
class Trained:
    """A training pass over ``loader`` ended; ``metrics`` are its results."""

    model: Model
    loader: Loader
    metrics: Sequence[Metric]


@event(frozen=True)
class Validated:
    """A validation pass over ``loader`` ended; ``metrics`` are its results."""

    model: Model
    loader: Loader
    metrics: Sequence[Metric]


@event(frozen=True)
class Tested:
    """A test pass over ``loader`` ended; ``metrics`` are its results."""

    model: Model
    loader: Loader
    metrics: Sequence[Metric]


@event(frozen=True)
class Iterated:
    """Every loader of an epoch ran once. The loaders travel with the event, so a consumer may record which data
    the model saw."""

    model: Model
    loaders: Sequence[tuple[str, Loader]]


def device() -> str:
    """Where batches go: ``"cpu"``, ``"cuda"``... Bound in the application layer.

    Raises:
        NotImplementedError: always; override it with ``service.dependency_overrides[device] = ...``.
    """
    raise NotImplementedError("override this dependency with a concrete implementation")


@service.handler
def iterate(model: Model, loaders: Sequence[tuple[str, Loader]], metrics: Metrics) -> None:
    """Run one epoch: ``train`` on the ``"train"`` loader, ``validate`` on every other, in the order given.

    Args:
        model: the aggregate.
        loaders: ``(phase, loader)`` pairs, e.g. ``[("train", train_loader), ("validation", validation_loader)]``.
        metrics: the accumulator, shared by the phases (each ``compute`` starts it again).
    """
    for phase, loader in loaders:
        if phase == "train":
            train(model, loader, metrics)
        else:
            validate(model, loader, metrics)
    producer.dispatch(Iterated(model, loaders))


@service.handler
def train(model: Model, loader: Loader, metrics: Metrics, device: str = Depends(device)) -> Sequence[Metric]:
    """One training pass: ``model.fit`` on every batch, in the ``"train"`` phase.

    Args:
        model: the aggregate.
        loader: yields ``(inputs, targets)``: [batch, 1, H, W] float32 images and [batch] int64 labels.
        metrics: the accumulator.
        device: injected; where the batches go.

    Returns:
        The pass's metrics, also dispatched in ``Trained``.
    """
    model.phase = "train"
    for batch, (inputs, targets) in enumerate(loader, start=1):
        inputs, targets = inputs.to(device), targets.to(device)
        predictions, loss = model.fit(inputs, targets)
        metrics.update(batch, loss, predictions, targets)
    results = metrics.compute()
    producer.dispatch(Trained(model, loader, results))
    return results


def _evaluate(model: Model, loader: Loader, metrics: Metrics, device: str) -> Sequence[Metric]:
    model.phase = "evaluation"
    with inference_mode():
        for batch, (inputs, targets) in enumerate(loader, start=1):
            inputs, targets = inputs.to(device), targets.to(device)
            predictions, loss = model.evaluate(inputs, targets)
            metrics.update(batch, loss, predictions, targets)
    return metrics.compute()


@service.handler
def validate(model: Model, loader: Loader, metrics: Metrics, device: str = Depends(device)) -> Sequence[Metric]:
    """One validation pass: ``model.evaluate`` on every batch, in the ``"evaluation"`` phase, without gradients.

    Args:
        model: the aggregate.
        loader: yields ``(inputs, targets)`` as for :func:`train`.
        metrics: the accumulator.
        device: injected; where the batches go.

    Returns:
        The pass's metrics, also dispatched in ``Validated``.
    """
    results = _evaluate(model, loader, metrics, device)
    producer.dispatch(Validated(model, loader, results))
    return results


@service.handler
def test(model: Model, loader: Loader, metrics: Metrics, device: str = Depends(device)) -> Sequence[Metric]:
    """One pass over the test data, as :func:`validate` but dispatching ``Tested``, which the early-stopping and
    TensorBoard consumers do not handle.

    Args:
        model: the aggregate.
        loader: yields ``(inputs, targets)`` as for :func:`train`.
        metrics: the accumulator.
        device: injected; where the batches go.

    Returns:
        The pass's metrics.
    """
    results = _evaluate(model, loader, metrics, device)
    producer.dispatch(Tested(model, loader, results))
    return results
