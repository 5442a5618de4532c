"""Domain events: facts an aggregate records now and dispatches when it commits.

Follows the TorchSystem seed (``torchsystem.domain.Events``): events are classes or instances, exceptions are
events too, and an exception that nobody handles is raised at :meth:`Events.commit`. That last rule is how
the seed's early stopping works: a consumer enqueues ``StopIteration`` and the aggregate commits its events
in its ``onepoch`` hook, which ends the training loop.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeAlias

__all__ = ["Event", "Events"]


class Event:
    """Base class for domain events.

    Subclassing it is optional (any class or instance can be enqueued); it documents intent.

    Example:
        >>> class Diverged(Event):
        ...     def __init__(self, loss: float) -> None:
        ...         self.loss = loss
    """


DomainEvent: TypeAlias = Event | type[Event] | BaseException | type[BaseException] | object
Handler: TypeAlias = Callable[..., Any]


def _takes_event(handler: Handler) -> bool:
    """Whether ``handler`` accepts the event as an argument (the seed allows both ``lambda: ...`` and
    ``lambda event: ...``)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass the event
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters
    )


def _is_exception(event: object) -> bool:
    return isinstance(event, BaseException) or (
        isinstance(event, type) and issubclass(event, BaseException)
    )


class Events:
    """A queue of domain events with handlers keyed by event type.

    Attributes:
        queue: the events enqueued and not yet committed, oldest first.
        handlers: ``{event type: handler or iterable of handlers}`` (a list, a tuple, a set, a generator: any
            iterable, as upstream; a one-shot iterator is kept as a tuple the first time it is used, so its
            handlers get every later event too). A handler takes no argument or the event (the class or the
            instance, as it was enqueued).

    Example:
        >>> events = Events()
        >>> events.handlers[KeyError] = lambda: print("handled")
        >>> events.enqueue(KeyError)
        >>> events.enqueue(StopIteration)
        >>> events.commit()
        Traceback (most recent call last):
        ...
        StopIteration
    """

    def __init__(self) -> None:
        self.queue: deque[DomainEvent] = deque()
        self.handlers: dict[type, Handler | Iterable[Handler]] = {}

    def __len__(self) -> int:
        return len(self.queue)

    def enqueue(self, event: DomainEvent) -> None:
        """Record ``event`` to be dispatched at the next :meth:`commit`.

        Args:
            event: an event class or instance; exception classes and instances are events too.
        """
        self.queue.append(event)

    def dequeue(self) -> DomainEvent | None:
        """Remove and return the oldest event, or ``None`` when the queue is empty."""
        return self.queue.popleft() if self.queue else None

    def handle(self, event: DomainEvent) -> None:
        """Dispatch one event to its handlers, in the order they were given.

        Args:
            event: an event class or instance. Handlers are looked up by the class itself for a class and by
                ``type(event)`` for an instance.

        Raises:
            BaseException: ``event`` itself, when it is an exception (class or instance) with no handler.
        """
        key = event if isinstance(event, type) else type(event)
        handlers = self.handlers.get(key)
        if isinstance(handlers, Iterator):  # a generator would be spent after one event: keep its handlers
            handlers = self.handlers[key] = tuple(handlers)
        if handlers:
            for handler in handlers if isinstance(handlers, Iterable) else (handlers,):
                if _takes_event(handler):
                    handler(event)
                else:
                    handler()
        elif _is_exception(event):
            raise event  # type: ignore[misc]

    def commit(self) -> None:
        """Dispatch every queued event, oldest first, emptying the queue.

        Raises:
            BaseException: the first unhandled exception event; the events after it stay queued.
        """
        while self.queue:
            self.handle(self.queue.popleft())
