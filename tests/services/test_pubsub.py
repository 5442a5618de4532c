from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from torchsystem_trainer.depends import Depends
from torchsystem_trainer.services import Consumer, Publisher, Subscriber, event


@dataclass
class Metric:
    name: str
    value: float


class Queue(list[Any]):
    """The part of the seed's Events that its early stopping uses."""

    def enqueue(self, item: Any) -> None:
        self.append(item)


@dataclass
class Model:
    events: Queue = field(default_factory=Queue)


@event
class Trained:
    model: Model
    metrics: list[Metric]


@event
class Validated:
    model: Model
    metrics: list[Metric]


# The seed README's src/services/earlystopping.py, verbatim but for the imports.
subscriber = Subscriber()
consumer = Consumer()


@consumer.handler
def deliver_metrics(event: Trained | Validated):  # type: ignore[no-untyped-def]
    for metric in event.metrics:
        try:
            subscriber.receive(metric, metric.name)
        except StopIteration:
            event.model.events.enqueue(StopIteration)


@subscriber.subscribe('loss')
def on_low_loss(metric: Metric):  # type: ignore[no-untyped-def]
    if metric.value < 0.001:
        raise StopIteration


@subscriber.subscribe('accuracy')
def on_high_accuracy(metric: Metric):  # type: ignore[no-untyped-def]
    if metric.value > 0.995:
        raise StopIteration


@pytest.mark.parametrize(
    ("event_type", "metrics", "expected"),
    [
        (Trained, [Metric("loss", 0.5), Metric("accuracy", 0.9)], []),
        (Trained, [Metric("loss", 0.0005), Metric("accuracy", 0.9)], [StopIteration]),
        (Validated, [Metric("loss", 0.5), Metric("accuracy", 0.999)], [StopIteration]),
        (Validated, [Metric("loss", 0.0001), Metric("accuracy", 0.999)], [StopIteration, StopIteration]),
        (Trained, [Metric("perplexity", 0.0)], []),
    ],
    ids=["no-stop", "low-loss", "high-accuracy", "both", "unknown-topic"],
)
def test_seed_early_stopping_raises_stop_iteration_through_the_subscriber(
    event_type: type[Any], metrics: list[Metric], expected: list[Any]
) -> None:
    model = Model()
    consumer.consume(event_type(model, metrics))
    assert model.events == expected


def test_receive_calls_the_topic_handlers_in_subscription_order() -> None:
    subscriber = Subscriber()
    calls: list[tuple[str, Any]] = []

    @subscriber.subscribe("loss", "accuracy")
    def store(metric: float) -> None:
        calls.append(("store", metric))

    @subscriber.subscribe("loss")
    def on_loss(metric: float) -> None:
        calls.append(("on_loss", metric))

    subscriber.receive(0.1, "loss")
    subscriber.receive(0.9, "accuracy")
    subscriber.receive(1.0, "perplexity")  # nobody subscribed: nothing happens
    assert calls == [("store", 0.1), ("on_loss", 0.1), ("store", 0.9)]
    assert subscriber.subscriptions() == {"loss": [store, on_loss], "accuracy": [store]}


def test_subscribe_needs_a_topic_and_registers_a_repeated_topic_once() -> None:
    subscriber = Subscriber()
    with pytest.raises(ValueError, match="at least one topic"):
        subscriber.subscribe()
    calls: list[float] = []

    @subscriber.subscribe("loss", "loss")
    def store(metric: float) -> None:
        calls.append(metric)

    subscriber.receive(0.1, "loss")
    assert calls == [0.1]


def metrics_store() -> list[Any]:
    raise NotImplementedError("bound in the application layer")


def test_subscriber_injects_dependencies_with_its_overrides() -> None:
    subscriber = Subscriber()
    database: list[Any] = []
    log: list[str] = []

    @subscriber.subscribe("loss", "accuracy")
    def store(metric: float, metrics: list[Any] = Depends(metrics_store)) -> None:
        metrics.append(metric)

    def session() -> Iterator[list[Any]]:
        log.append("open")
        yield database
        log.append("close")

    subscriber.dependency_overrides[metrics_store] = session
    subscriber.receive(0.1, "loss")
    subscriber.override(metrics_store, lambda: database)
    subscriber.receive(0.9, "accuracy")
    store(0.5)  # the decorator returns the injected wrapper
    assert database == [0.1, 0.9, 0.5]
    assert log == ["open", "close"]


def test_publisher_delivers_to_each_subscriber_in_registration_order() -> None:
    calls: list[tuple[str, float]] = []
    first, second = Subscriber(), Subscriber()

    @first.subscribe("loss")
    def on_first(metric: float) -> None:
        calls.append(("first", metric))

    @second.subscribe("loss")
    def on_second(metric: float) -> None:
        calls.append(("second", metric))

    publisher = Publisher()
    publisher.register(second, first)
    publisher.register(first)  # already registered: no-op
    assert publisher.subscribers == [second, first]
    publisher.publish(0.1, "loss")
    publisher.publish(0.9, "accuracy")
    assert calls == [("second", 0.1), ("first", 0.1)]


def test_publish_propagates_a_handler_exception_to_the_caller() -> None:
    subscriber = Subscriber()
    calls: list[float] = []

    @subscriber.subscribe("accuracy")
    def on_high_accuracy(metric: float) -> None:
        if metric > 0.99:
            raise StopIteration

    @subscriber.subscribe("accuracy")
    def after(metric: float) -> None:
        calls.append(metric)

    publisher = Publisher()
    publisher.register(subscriber)
    publisher.publish(0.9, "accuracy")
    with pytest.raises(StopIteration):
        publisher.publish(1.0, "accuracy")
    assert calls == [0.9]


def test_publisher_rejects_objects_without_receive_and_registers_nothing() -> None:
    publisher = Publisher()
    with pytest.raises(TypeError, match="cannot be registered on a Publisher"):
        publisher.register(Subscriber(), object())  # type: ignore[arg-type]
    assert publisher.subscribers == []


def test_register_subscribes_one_handler_to_one_topic_as_upstream() -> None:
    subscriber = Subscriber()
    database: list[Any] = []

    def store(metric: float, metrics: list[Any] = Depends(metrics_store)) -> None:
        metrics.append(metric)

    subscriber.override(metrics_store, lambda: database)
    injected = subscriber.register("loss", store)
    subscriber.receive(0.1, "loss")
    injected(0.2)
    assert database == [0.1, 0.2]
    assert subscriber.handlers == {"loss": [injected]}


def test_subscriber_handlers_and_publisher_subscribers_are_live_as_upstream() -> None:
    subscriber = Subscriber()
    seen: list[float] = []
    subscriber.handlers["loss"] = [seen.append]
    publisher = Publisher()
    publisher.subscribers.append(subscriber)
    publisher.publish(0.1, "loss")
    subscriber.handlers["loss"].clear()
    publisher.publish(0.2, "loss")
    subscriber.handlers["loss"].append(seen.append)
    publisher.subscribers.clear()
    publisher.publish(0.3, "loss")
    assert seen == [0.1]
