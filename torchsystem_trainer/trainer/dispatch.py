"""The Trainer's event bus: a Producer whose routing table is built once, when a run starts.

Consumers are asked for their ``subscriptions()`` (event name -> handlers) at registration; the bus keeps, for
each of the Trainer's event classes, the tuple of handlers in callback-list order. The loop asks
:meth:`EventBus.handlers` once per phase and builds an event only when that tuple is not empty, so events nobody
handles cost nothing per step (torchtnt and pluggy resolve their hooks the same way).

Delivery, when a handler raises:

- Most events stop at the first handler that raises; the exception propagates and later handlers do not get the
  event (as Lightning's ``_call_callback_hooks`` and pluggy's ``_multicall``). These are the events of a running
  loop, where an error ends the run and the run's end events follow.
- The events that end a run or report its failure, :data:`DELIVERED_TO_ALL` (``ExceptionRaised``, ``FitEnded``,
  ``StageEnded``), reach every handler: a handler that raises does not keep the others from closing what they
  hold (a ``TensorBoardLogger`` its writer, a ``ProgressBar`` its bar, a ``Timer`` its clock), as
  ``contextlib.ExitStack`` runs every exit callback when one raises. Once all have run, the first exception
  (``BaseException`` included: a ``KeyboardInterrupt`` in a handler waits for the others too) is raised again,
  with a note (``BaseException.add_note``) for each later one, naming its handler and giving its traceback.

  ``ExceptionRaised`` is among them because its handlers act on a run that is already failing and are the last
  chance to save its state (``ModelCheckpoint(save_on_exception=True)`` writes a checkpoint there): one callback's
  error must not cost another callback that chance. Lightning's ``_interrupt`` calls ``on_exception`` on every
  callback in turn, but through the same ``_call_callback_hooks`` loop, which stops at the first callback that
  raises; here the others still get the event. ``StageStarted`` and ``FitStarted`` are not among them: an error
  there ends the run before it began, and its end events still reach everyone.

The per-event choice is made once, in the bus's constructor; :meth:`EventBus.emit` does the same work for every
event (one dict lookup, then a call per handler), so batch events cost nothing more. The per-batch path of the
loop (``phases.py``) calls the handlers of batch events directly and is not affected.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from torchsystem_trainer.events import EVENTS, ExceptionRaised, FitEnded, StageEnded
from torchsystem_trainer.services import Consumer, Producer

__all__ = ["DELIVERED_TO_ALL", "EventBus"]

Handler = Callable[[Any], None]

DELIVERED_TO_ALL: frozenset[type] = frozenset({ExceptionRaised, FitEnded, StageEnded})
"""The event classes every handler gets even when an earlier handler raised (see the module docstring)."""


class EventBus(Producer):
    """Dispatches the Trainer's events to its callbacks through a precomputed table.

    Args:
        consumers: the callbacks and consumers, in dispatch order.
        subscriptions: for each consumer, its ``subscriptions()`` (computed, and checked, when the Trainer was
            built).
        wrap: ``wrap(handler, "<Callback>.<hook>")`` returns what the table holds instead of each handler (a
            profiler's timer); ``None``, the default, keeps the handlers themselves.
    """

    def __init__(
        self,
        consumers: Sequence[Consumer],
        subscriptions: Sequence[dict[str, list[Handler]]],
        wrap: Callable[[Handler, str], Handler] | None = None,
    ) -> None:
        super().__init__()
        self.register(*consumers)
        if wrap is not None:
            subscriptions = [
                {
                    event: [wrap(handler, f"{type(consumer).__name__}.{_name(handler)}") for handler in handlers]
                    for event, handlers in table.items()
                }
                for consumer, table in zip(consumers, subscriptions, strict=True)
            ]
        self._table: dict[type, tuple[Handler, ...]] = {
            kind: tuple(h for table in subscriptions for h in table.get(kind.__name__, ())) for kind in EVENTS
        }
        # what emit/dispatch call: the handlers themselves, or, for an event delivered to all with more than one
        # handler, one function that calls them all
        self._routes: dict[type, tuple[Handler, ...]] = {
            kind: (_deliver_to_all(kind, handlers),) if kind in DELIVERED_TO_ALL and len(handlers) > 1 else handlers
            for kind, handlers in self._table.items()
        }

    def handlers(self, kind: type) -> tuple[Handler, ...]:
        """The handlers of event class ``kind``, in dispatch order (empty when nobody listens)."""
        return self._table.get(kind, ())

    def dispatch(self, message: Any) -> None:
        """Call the handlers of ``message``'s class, in order.

        Raises:
            BaseException: whatever a handler raises. For a class in :data:`DELIVERED_TO_ALL`, after every handler
                ran, the first one's exception, with a note for each later one; for any other class, at once, and
                later handlers are not called.
        """
        for handler in self._routes.get(type(message), ()):
            handler(message)

    def emit(self, kind: type, *fields: Any) -> None:
        """Build ``kind(*fields)`` and dispatch it, only if someone handles ``kind``.

        Raises:
            BaseException: as :meth:`dispatch`.
        """
        handlers = self._routes.get(kind)
        if handlers:
            message = kind(*fields)
            for handler in handlers:
                handler(message)


def _name(handler: Handler) -> str:
    return str(getattr(handler, "__name__", None) or type(handler).__name__)


def _deliver_to_all(kind: type, handlers: tuple[Handler, ...]) -> Handler:
    """One handler that calls every one of ``handlers``, then raises the first exception again, with a note for
    each later one (``contextlib.ExitStack`` runs all its callbacks the same way; it chains instead of noting)."""

    def deliver(message: Any) -> None:
        first: BaseException | None = None
        for handler in handlers:
            try:
                handler(message)
            except BaseException as error:
                if first is None:
                    first = error
                elif error is not first:
                    name = getattr(handler, "__qualname__", None) or repr(handler)
                    first.add_note(
                        f"{kind.__name__} was still delivered to the handlers after the one that raised this; "
                        f"{name} raised too:\n" + "".join(traceback.format_exception(error)).rstrip()
                    )
        if first is not None:
            raise first

    return deliver
