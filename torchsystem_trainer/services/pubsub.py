"""Publisher/Subscriber: messages routed by topic, as in the seed.

Unlike a :class:`~torchsystem_trainer.services.prodcon.Consumer`, which picks handlers from the message's type, a
:class:`Subscriber` picks them from the topic the message is sent on (the seed uses metric names: ``"loss"``,
``"accuracy"``). Exceptions raised by handlers propagate to whoever published, which is how the seed's early
stopping raises ``StopIteration`` back through ``subscriber.receive``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, TypeVar, cast

from torchsystem_trainer.depends import Depends as Depends
from torchsystem_trainer.depends import Injector, Provider, inject
from torchsystem_trainer.services.registration import register_unique

__all__ = ["Depends", "Publisher", "Subscriber"]

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
        self.__dict__["_subscriber_handlers"] = {}  # a name a subclass will not pick for its own attribute

    @property
    def handlers(self) -> dict[Hashable, list[Callable[[Any], None]]]:
        """The ``topic -> injected handlers`` table :meth:`receive` reads: the live dict (as upstream), so
        handlers added or removed there change what a message reaches. A function added directly is called as
        it is, without dependency injection; :meth:`register` and :meth:`subscribe` inject."""
        table: dict[Hashable, list[Callable[[Any], None]]] | None = self.__dict__.get("_subscriber_handlers")
        if table is None:  # a subclass that skipped __init__
            table = self.__dict__["_subscriber_handlers"] = {}
        return table

    @handlers.setter
    def handlers(self, table: dict[Hashable, list[Callable[[Any], None]]]) -> None:
        self.__dict__["_subscriber_handlers"] = table

    def _add(self, topics: tuple[Hashable, ...], function: Callable[P, R]) -> Callable[P, R]:
        injected = inject(self.provider)(function)
        handler = cast(Callable[[Any], None], injected)
        table = self.handlers
        for topic in dict.fromkeys(topics):
            table.setdefault(topic, []).append(handler)
        return injected

    def register(self, topic: Hashable, handler: Callable[P, R]) -> Callable[P, R]:
        """Register ``handler`` on ``topic`` (torchsystem 1.4.9 ``Subscriber.register``).

        Args:
            topic: The topic, e.g. ``"loss"``.
            handler: Called as ``handler(message)`` with dependencies injected.

        Returns:
            The injected wrapper (upstream returns ``None``).

        Raises:
            TypeError: If ``handler`` is not callable or ``topic`` is not hashable.
        """
        hash(topic)  # an unhashable topic fails here, before anything is registered
        return self._add((topic,), handler)

    def subscribe(self, *topics: Hashable) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Register the decorated function on every topic in ``topics``.

        Args:
            *topics: One or more topic names; a repeated topic registers once (upstream registers it twice,
                so the handler would run twice per message).

        Returns:
            A decorator that returns the injected wrapper, which stays directly callable (upstream returns the
            plain function).

        Raises:
            ValueError: If no topic is given (upstream registers nothing, silently).
        """
        if not topics:
            raise ValueError("subscribe() needs at least one topic, e.g. @subscriber.subscribe('loss')")
        for topic in topics:
            hash(topic)

        def decorator(function: Callable[P, R]) -> Callable[P, R]:
            return self._add(topics, function)

        return decorator

    def receive(self, message: Any, topic: Hashable) -> None:
        """Call the handlers subscribed to ``topic`` with ``message``, in subscription order.

        Args:
            message: The message, passed as each handler's first argument.
            topic: The topic; one nobody subscribed to is ignored.

        Raises:
            Exception: Whatever a handler raises (``StopIteration`` included) propagates; later handlers are
                not called.
        """
        for handler in self.handlers.get(topic, ()):
            handler(message)

    def subscriptions(self) -> dict[Hashable, list[Callable[[Any], None]]]:
        """A copy of the ``topic -> injected handlers`` table.

        Returns:
            The table, topics in first-subscription order.
        """
        return {topic: list(handlers) for topic, handlers in self.handlers.items()}


class Publisher:
    """Sends messages on a topic to every registered subscriber, in registration order.

    Attributes:
        subscribers: the registered subscribers, in registration order: the live list (as upstream), so a
            subscriber appended or removed there changes who :meth:`publish` reaches. :meth:`register` checks
            each subscriber and skips one already registered; appending directly does neither.
    """

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []

    def register(self, *subscribers: Subscriber) -> None:
        """Register subscribers; registering one that is already registered does nothing.

        Args:
            *subscribers: Objects with a ``receive(message, topic)`` method, usually :class:`Subscriber`.

        Raises:
            TypeError: If one has no callable ``receive``; none is registered then.
        """
        register_unique(self.subscribers, subscribers, "receive", "Publisher")

    def publish(self, message: Any, topic: Hashable) -> None:
        """Call ``subscriber.receive(message, topic)`` on every registered subscriber.

        Args:
            message: The message.
            topic: The topic it is published on.

        Raises:
            Exception: Whatever a handler raises propagates to the caller; later subscribers are not called.
        """
        for subscriber in self.subscribers:
            subscriber.receive(message, topic)
