"""The Trainer's event bus: a Producer whose routing table is built once, when a run starts.

Consumers are asked for their ``subscriptions()`` (event name -> handlers) at registration; the bus keeps, for
each of the Trainer's event classes, the tuple of handlers in callback-list order. The loop asks
:meth:`EventBus.handlers` once per phase and builds an event only when that tuple is not empty, so events nobody
handles cost nothing per step (torchtnt and pluggy resolve their hooks the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchsystem_trainer.events import EVENTS
from torchsystem_trainer.services import Consumer, Producer

__all__ = ["EventBus"]

Handler = Callable[[Any], None]


class EventBus(Producer):
    """Dispatches the Trainer's events to its callbacks through a precomputed table.

    Args:
        consumers: the callbacks and consumers, in dispatch order.
        subscriptions: for each consumer, its ``subscriptions()`` (computed, and checked, when the Trainer was
            built).
    """

    def __init__(self, consumers: Sequence[Consumer], subscriptions: Sequence[dict[str, list[Handler]]]) -> None:
        super().__init__()
        self.register(*consumers)
        self._table: dict[type, tuple[Handler, ...]] = {
            kind: tuple(h for table in subscriptions for h in table.get(kind.__name__, ())) for kind in EVENTS
        }

    def handlers(self, kind: type) -> tuple[Handler, ...]:
        """The handlers of event class ``kind``, in dispatch order (empty when nobody listens)."""
        return self._table.get(kind, ())

    def dispatch(self, message: Any) -> None:
        """Call the handlers of ``message``'s class, in order.

        Raises:
            Exception: whatever a handler raises; later handlers are not called.
        """
        for handler in self._table.get(type(message), ()):
            handler(message)

    def emit(self, kind: type, *fields: Any) -> None:
        """Build ``kind(*fields)`` and dispatch it, only if someone handles ``kind``."""
        handlers = self._table.get(kind)
        if handlers:
            message = kind(*fields)
            for handler in handlers:
                handler(message)
