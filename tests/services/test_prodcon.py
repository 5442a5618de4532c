from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from torchsystem_trainer.depends import Depends
from torchsystem_trainer.services import Consumer, Producer, event


@event
class Trained:
    model: str
    loss: float


@event
class Validated:
    model: str
    loss: float


@event
class Iterated:
    model: str


def writer() -> list[str]:
    raise NotImplementedError("bound in the application layer")


def test_event_turns_an_annotated_class_into_a_slotted_dataclass() -> None:
    trained = Trained("mlp", 0.5)
    assert dataclasses.is_dataclass(trained)
    assert [field.name for field in dataclasses.fields(Trained)] == ["model", "loss"]
    assert trained == Trained(model="mlp", loss=0.5)
    assert not hasattr(trained, "__dict__")


def test_event_returns_an_existing_dataclass_unchanged() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stopped:
        epoch: int

    assert event(Stopped) is Stopped


def test_event_can_freeze_the_fields() -> None:
    @event(frozen=True)
    class Stopped:
        epoch: int

    with pytest.raises(dataclasses.FrozenInstanceError):
        Stopped(1).epoch = 2  # type: ignore[misc]


def test_event_rejects_non_classes() -> None:
    with pytest.raises(TypeError, match="decorates classes"):
        event(lambda: None)  # type: ignore[call-overload]


def _handler_annotated(annotation: Any) -> Callable[[Any], None]:
    def handler(event):  # type: ignore[no-untyped-def]
        pass

    handler.__annotations__ = {"event": annotation}
    return handler


@pytest.mark.parametrize(
    ("annotation", "names"),
    [
        (Trained, ["Trained"]),
        (Trained | Validated, ["Trained", "Validated"]),
        (typing.Union[Trained, Validated], ["Trained", "Validated"]),  # noqa: UP007
        (typing.Optional[Trained], ["Trained"]),  # noqa: UP007
        (typing.Annotated[Trained, "meta"], ["Trained"]),
        ("Trained", ["Trained"]),
        ("Trained | Validated", ["Trained", "Validated"]),
        ("Union[Trained, Validated]", ["Trained", "Validated"]),
        ("events.Trained | None", ["Trained"]),
        ("Unknown | Trained", ["Unknown", "Trained"]),
        (list[int], ["list"]),
    ],
    ids=[
        "class", "pipe-union", "typing-union", "optional", "annotated", "string", "string-pipe-union",
        "string-typing-union", "string-dotted-optional", "string-unresolvable", "generic-alias",
    ],
)
def test_handler_is_registered_on_each_event_type_of_its_first_annotation(annotation: Any, names: list[str]) -> None:
    consumer = Consumer()
    consumer.handler(_handler_annotated(annotation))
    assert list(consumer.subscriptions()) == names


def test_postponed_annotations_of_module_level_events_are_resolved() -> None:
    consumer = Consumer()
    calls: list[Any] = []

    @consumer.handler
    def deliver(event: Trained | Validated, writer: list[str] = Depends(writer)) -> None:
        calls.append(event)

    assert deliver.__annotations__["event"] == "Trained | Validated"  # from __future__ import annotations
    consumer.override(writer, list)
    consumer.consume(Validated("mlp", 0.5))
    assert calls == [Validated("mlp", 0.5)]


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (None, "must annotate its first parameter 'event'"),
        (Any, "must annotate its first parameter with event classes"),
        (type(None), "no event class"),
        ("Trained[", "unreadable event annotation"),
    ],
    ids=["missing", "any", "none-only", "bad-string"],
)
def test_handler_without_a_usable_annotation_raises_type_error_naming_it(annotation: Any, message: str) -> None:
    consumer = Consumer()
    handler = _handler_annotated(annotation)
    if annotation is None:
        handler.__annotations__ = {}
    with pytest.raises(TypeError, match=message) as info:
        consumer.handler(handler)
    assert "'handler'" in str(info.value)
    assert consumer.subscriptions() == {}


def test_handler_without_parameters_raises_type_error() -> None:
    def tick() -> None: ...

    with pytest.raises(TypeError, match="handler 'tick' must take the event as its first positional parameter"):
        Consumer().handler(tick)


def test_consume_calls_handlers_of_the_message_type_in_registration_order() -> None:
    consumer = Consumer()
    calls: list[tuple[str, str]] = []

    @consumer.handler
    def first(event: Trained) -> None:
        calls.append(("first", type(event).__name__))

    @consumer.handler
    def both(event: Trained | Validated) -> None:
        calls.append(("both", type(event).__name__))

    @consumer.handler
    def last(event: Trained) -> None:
        calls.append(("last", type(event).__name__))

    consumer.consume(Trained("mlp", 0.1))
    consumer.consume(Validated("mlp", 0.2))
    consumer.consume(Iterated("mlp"))  # no handler: ignored
    assert calls == [("first", "Trained"), ("both", "Trained"), ("last", "Trained"), ("both", "Validated")]


def test_routing_is_by_type_name_so_an_other_modules_event_is_delivered() -> None:
    consumer = Consumer()
    received: list[Any] = []

    @consumer.handler
    def on_trained(event: Trained) -> None:
        received.append(event)

    other = type("Trained", (), {"__module__": "somewhere.else"})()  # same name, unrelated class
    consumer.consume(other)
    assert received == [other]


def test_consumer_injects_dependencies_and_cleans_up_per_message() -> None:
    consumer = Consumer()
    log: list[str] = []

    @consumer.handler
    def deliver(event: Trained, writer: list[str] = Depends(writer)) -> None:
        writer.append(f"{event.model}:{event.loss}")

    def memory_writer() -> Iterator[list[str]]:
        log.append("open")
        yield log
        log.append("close")

    consumer.dependency_overrides[writer] = memory_writer
    consumer.consume(Trained("mlp", 0.5))
    consumer.override(writer, lambda: log)
    consumer.consume(Trained("cnn", 0.25))
    assert log == ["open", "mlp:0.5", "close", "cnn:0.25"]


def test_unimplemented_dependency_of_a_consumer_names_the_handler() -> None:
    consumer = Consumer()

    @consumer.handler
    def deliver(event: Trained, writer: list[str] = Depends(writer)) -> None: ...

    with pytest.raises(NotImplementedError, match=r"'writer' of handler 'deliver'.*consumer\.dependency_overrides"):
        consumer.consume(Trained("mlp", 0.5))


def test_subscriptions_are_a_copy_of_ready_to_call_injected_handlers() -> None:
    consumer = Consumer()
    consumer.override(writer, lambda: ["injected"])
    calls: list[tuple[str, list[str]]] = []

    @consumer.handler
    def deliver(event: Trained | Validated, writer: list[str] = Depends(writer)) -> None:
        calls.append((event.model, writer))

    table = consumer.subscriptions()
    assert table == {"Trained": [deliver], "Validated": [deliver]}
    table["Trained"][0](Trained("mlp", 0.5))
    assert calls == [("mlp", ["injected"])]

    table["Trained"].clear()
    table.clear()
    assert consumer.subscriptions() == {"Trained": [deliver], "Validated": [deliver]}


def test_register_takes_explicit_event_names() -> None:
    consumer = Consumer()
    seen: list[Any] = []
    injected = consumer.register(["Trained", "Trained", "Iterated"], seen.append)
    consumer.consume(Trained("mlp", 0.5))
    consumer.consume(Iterated("mlp"))
    assert seen == [Trained("mlp", 0.5), Iterated("mlp")]
    assert consumer.subscriptions() == {"Trained": [injected], "Iterated": [injected]}
    with pytest.raises(ValueError, match="at least one event name"):
        consumer.register([], seen.append)


def test_consumer_subclass_that_skips_init_still_works() -> None:
    class Callback(Consumer):
        def __init__(self) -> None:  # deliberately no super().__init__()
            self.seen: list[Any] = []

    callback = Callback()
    assert callback.subscriptions() == {}
    callback.consume(Trained("mlp", 0.5))
    callback.register(["Trained"], callback.seen.append)
    callback.consume(Trained("mlp", 0.5))
    assert callback.seen == [Trained("mlp", 0.5)]


def test_producer_dispatches_to_consumers_in_registration_order_once_each() -> None:
    calls: list[str] = []
    first, second = Consumer(), Consumer()

    @first.handler
    def on_first(event: Trained) -> None:
        calls.append("first")

    @second.handler
    def on_second(event: Trained) -> None:
        calls.append("second")

    producer = Producer()
    producer.register(second, first)
    producer.register(second)  # already registered: no-op
    assert producer.consumers == [second, first]
    producer.dispatch(Trained("mlp", 0.5))
    producer.dispatch(Iterated("mlp"))
    assert calls == ["second", "first"]


def test_producer_consumers_is_the_live_list_as_upstream() -> None:
    calls: list[str] = []
    consumer = Consumer()

    @consumer.handler
    def on_trained(event: Trained) -> None:
        calls.append("trained")

    producer = Producer()
    producer.consumers.append(consumer)  # reaches dispatch
    producer.dispatch(Trained("mlp", 0.5))
    producer.consumers.remove(consumer)  # and so does a removal
    producer.dispatch(Trained("mlp", 0.5))
    assert calls == ["trained"]


def test_producer_only_calls_consume_so_overriding_subclasses_work() -> None:
    class Recording(Consumer):
        def __init__(self) -> None:  # no Consumer.__init__: the producer must not need its state
            self.messages: list[Any] = []

        def consume(self, message: Any) -> None:
            self.messages.append(message)

        def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
            raise AssertionError("the producer must not read subscriptions")

    recording = Recording()
    producer = Producer()
    producer.register(recording)
    producer.dispatch(Iterated("mlp"))
    assert recording.messages == [Iterated("mlp")]


def test_producer_rejects_objects_without_consume_and_registers_nothing() -> None:
    producer = Producer()
    with pytest.raises(TypeError, match="'not a consumer' cannot be registered on a Producer"):
        producer.register(Consumer(), "not a consumer")  # type: ignore[arg-type]
    assert producer.consumers == []


def test_a_consumer_exception_propagates_and_stops_the_dispatch() -> None:
    calls: list[str] = []
    failing, after = Consumer(), Consumer()

    @failing.handler
    def stop(event: Trained) -> None:
        raise StopIteration

    @after.handler
    def record(event: Trained) -> None:
        calls.append("after")

    producer = Producer()
    producer.register(failing, after)
    with pytest.raises(StopIteration):
        producer.dispatch(Trained("mlp", 0.5))
    assert calls == []


class ModelTrained:
    def __init__(self, value: int = 0) -> None:
        self.value = value


def test_handlers_are_filed_under_the_kebab_case_key_with_their_types_as_upstream() -> None:
    consumer = Consumer()

    @consumer.handler
    def deliver(event: ModelTrained | Validated) -> None: ...

    assert consumer.handlers == {"model-trained": [deliver], "validated": [deliver]}
    assert consumer.types == {"model-trained": ModelTrained, "validated": Validated}
    assert consumer.subscriptions() == {"ModelTrained": [deliver], "Validated": [deliver]}


def test_consumer_handlers_is_the_live_table_as_upstream() -> None:
    consumer = Consumer()
    seen: list[Any] = []
    consumer.handlers["model-trained"] = [seen.append]  # reaches consume, by the message's key
    message = ModelTrained(1)
    consumer.consume(message)
    consumer.handlers.clear()
    consumer.consume(ModelTrained(2))
    assert seen == [message]


def test_register_takes_an_event_class_or_a_union_as_upstream() -> None:
    consumer = Consumer()
    seen: list[Any] = []

    def record(event: Any, suffix: str = Depends(lambda: "!")) -> None:
        seen.append(f"{type(event).__name__}{suffix}")

    injected = consumer.register(ModelTrained, record)
    assert injected(ModelTrained()) is None and seen == ["ModelTrained!"]
    consumer.register(Trained | Validated, record)
    consumer.consume(ModelTrained())
    consumer.consume(Validated("mlp", 0.5))
    assert seen == ["ModelTrained!", "ModelTrained!", "Validated!"]
    assert consumer.types == {"model-trained": ModelTrained, "trained": Trained, "validated": Validated}


def test_the_generator_makes_the_keys_and_routes_by_them() -> None:
    consumer = Consumer(generator=str.lower)
    seen: list[Any] = []

    @consumer.handler
    def record(event: ModelTrained) -> None:
        seen.append(event.value)

    consumer.consume(ModelTrained(3))
    assert list(consumer.handlers) == ["modeltrained"] and seen == [3]
    with pytest.raises(TypeError, match="generator must be callable"):
        Consumer(generator="lower")  # type: ignore[arg-type]


def test_depends_is_importable_from_every_services_module_as_upstream() -> None:
    import torchsystem_trainer.compiler
    import torchsystem_trainer.services
    import torchsystem_trainer.services.prodcon
    import torchsystem_trainer.services.pubsub
    import torchsystem_trainer.services.service

    modules = [
        torchsystem_trainer.compiler,
        torchsystem_trainer.services,
        torchsystem_trainer.services.prodcon,
        torchsystem_trainer.services.pubsub,
        torchsystem_trainer.services.service,
    ]
    assert all(module.Depends is Depends and "Depends" in module.__all__ for module in modules)
