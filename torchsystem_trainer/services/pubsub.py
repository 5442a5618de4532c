"""Publisher/Subscriber: messages routed by topic, as in the seed.

Unlike a :class:`~torchsystem_trainer.services.prodcon.Consumer`, which picks handlers from the message's type, a
:class:`Subscriber` picks them from the topic the message is sent on (the seed uses metric names: ``"loss"``,
``"accuracy"``). Exceptions raised by handlers propagate to whoever published, which is how the seed's early
stopping raises ``StopIteration`` back through ``subscriber.receive``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from torchsystem_trainer.depends import Injector, Provider, inject
from torchsystem_trainer.services.registration import register_unique

__all__ = ["Publisher", "Subscriber"]

P = ParamSpec("P")
R = TypeVar("R")


class Subscriber(Injector):
    """Calls the handlers subscribed to a topic, in subscription order.

    Example::

        subscriber = Subscriber()

        @subscriber.subscribe("loss")
        def on_low_loss(metric: Metric):
            if metric.value < 0.001:
                raise StopIteration

        subscriber.receive(metric, "loss")  # raises StopIteration when the loss is low

    Args:
        name: Optional name, used in error messages.
        provider: Overrides shared with other injectors; this subscriber gets its own if None.
    """

    def __init__(self, name: str | None = None, *, provider: Provider | None = None) -> None:
        super().__init__(provider)
        self.name = name
        self._handlers: dict[str, list[Callable[[Any], None]]] = {}

    def _table(self) -> dict[str, list[Callable[[Any], None]]]:
        table: dict[str, list[Callable[[Any], None]]] | None = getattr(self, "_handlers", None)
        if table is None:  # a subclass that skipped __init__
            table = self._handlers = {}
        return table

    def subscribe(self, *topics: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Register the decorated function on every topic in ``topics``.

        Args:
            *topics: One or more topic names; a repeated topic registers once.

        Returns:
            A decorator that returns the injected wrapper, which stays directly callable.

        Raises:
            ValueError: If no topic is given.
        """
        if not topics:
            raise ValueError("subscribe() needs at least one topic, e.g. @subscriber.subscribe('loss')")
        keys = list(dict.fromkeys(topics))

        def decorator(function: Callable[P, R]) -> Callable[P, R]:
            injected = inject(self.provider)(function)
            handler = cast(Callable[[Any], None], injected)
            table = self._table()
            for topic in keys:
                table.setdefault(topic, []).append(handler)
            return injected

        return decorator

    def receive(self, message: Any, topic: str) -> None:
        """Call the handlers subscribed to ``topic`` with ``message``, in subscription order.

        Args:
            message: The message, passed as each handler's first argument.
            topic: The topic; one nobody subscribed to is ignored.

        Raises:
            Exception: Whatever a handler raises (``StopIteration`` included) propagates; later handlers are
                not called.
        """
        for handler in self._table().get(topic, ()):
            handler(message)

    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """A copy of the ``topic -> injected handlers`` table.

        Returns:
            The table, topics in first-subscription order.
        """
        return {topic: list(handlers) for topic, handlers in self._table().items()}


class Publisher:
    """Sends messages on a topic to every registered subscriber, in registration order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    @property
    def subscribers(self) -> list[Subscriber]:
        """A copy of the registered subscribers, in registration order."""
        return list(self._subscribers)

    def register(self, *subscribers: Subscriber) -> None:
        """Register subscribers; registering one that is already registered does nothing.

        Args:
            *subscribers: Objects with a ``receive(message, topic)`` method, usually :class:`Subscriber`.

        Raises:
            TypeError: If one has no callable ``receive``; none is registered then.
        """
        register_unique(self._subscribers, subscribers, "receive", "Publisher")

    def publish(self, message: Any, topic: str) -> None:
        """Call ``subscriber.receive(message, topic)`` on every registered subscriber.

        Args:
            message: The message.
            topic: The topic it is published on.

        Raises:
            Exception: Whatever a handler raises propagates to the caller; later subscribers are not called.
        """
        for subscriber in self._subscribers:
            subscriber.receive(message, topic)
