"""Producer/Consumer: events routed to handlers by the event's type name, as in the seed.

A :class:`Consumer` registers each handler on the annotation of the handler's first parameter (every member of
a union). A :class:`Producer` delivers an event to its consumers by calling their ``consume`` and nothing else,
so any object with a ``consume(message)`` method can be registered.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast, dataclass_transform, overload

from torchsystem_trainer.depends import Injector, Provider, inject
from torchsystem_trainer.services.registration import register_unique

__all__ = ["Consumer", "Producer", "event"]

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=type)

_UNIONS = ("Union", "Optional")


def _names_in_source(text: str, handler: str) -> list[str]:
    """Event names in a string annotation such as ``"Trained | Validated"`` or ``"Optional[m.Trained]"``."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise TypeError(f"handler {handler!r} has an unreadable event annotation {text!r}") from None

    def walk(node: ast.expr) -> list[str]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.Constant) and node.value is None:
            return []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return _names_in_source(node.value, handler)
        if isinstance(node, ast.Name):
            return [node.id]
        if isinstance(node, ast.Attribute):
            return [node.attr]
        if isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute)):
            (base,) = walk(node.value)
            if base not in _UNIONS:
                return [base]  # a generic event such as Batch[int] is routed as Batch
            members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return [name for member in members for name in walk(member)]
        raise TypeError(f"handler {handler!r} has an unsupported event annotation {text!r}")

    return walk(tree)


def _names_in(annotation: Any, handler: str) -> list[str]:
    """Event type names in a resolved (or raw) annotation; unions give one name per member, None gives none."""
    if isinstance(annotation, str):
        return _names_in_source(annotation, handler)
    if isinstance(annotation, typing.ForwardRef):
        return _names_in_source(annotation.__forward_arg__, handler)
    if annotation is None or annotation is type(None):
        return []
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [name for member in typing.get_args(annotation) for name in _names_in(member, handler)]
    if origin is typing.Annotated:
        return _names_in(typing.get_args(annotation)[0], handler)
    if origin is not None:
        annotation = origin
    if annotation is Any or not isinstance(annotation, type):
        raise TypeError(f"handler {handler!r} must annotate its first parameter with event classes, got {annotation!r}")
    return [annotation.__name__]


def _event_names(function: Callable[..., Any]) -> list[str]:
    """The type names a handler is for, read from its first parameter's annotation."""
    handler = str(getattr(function, "__name__", repr(function)))
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"handler {handler!r} must take the event as its first positional parameter")
    first = parameters[0]
    if first.annotation is inspect.Parameter.empty:
        raise TypeError(f"handler {handler!r} must annotate its first parameter {first.name!r} with the event type")
    try:  # resolves string annotations (from __future__ import annotations) where it can
        annotation = typing.get_type_hints(function).get(first.name, first.annotation)
    except Exception:  # a name only known under TYPE_CHECKING, or a local class: route by the raw text
        annotation = first.annotation
    names = list(dict.fromkeys(_names_in(annotation, handler)))
    if not names:
        raise TypeError(f"handler {handler!r} annotates its first parameter with no event class: {annotation!r}")
    return names


class Consumer(Injector):
    """Calls the handlers registered for an event's type, in registration order.

    Routing is by type *name* (``type(message).__name__``), as in the seed: a handler written for a class named
    ``Trained`` also receives any other class named ``Trained``, from any module. This lets a consumer be
    written against the ubiquitous language without importing the producer's classes. Subclasses are not
    routed to their base class's handlers; annotate with a union to handle several types.

    Example::

        consumer = Consumer()

        @consumer.handler
        def deliver_metrics(event: Trained | Validated, writer: SummaryWriter = Depends(writer)): ...

        consumer.consume(Trained(model, loader, metrics))  # calls deliver_metrics

    Args:
        name: Optional name, used in error messages.
        provider: Overrides shared with other injectors; this consumer gets its own if None.
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

    def register(self, names: Iterable[str], function: Callable[P, R]) -> Callable[P, R]:
        """Register ``function`` for events whose type name is in ``names``, without reading annotations.

        Args:
            names: Event type names, e.g. ``["Trained", "Validated"]``.
            function: The handler, called as ``function(message)`` with dependencies injected.

        Returns:
            The injected wrapper.

        Raises:
            ValueError: If ``names`` is empty.
        """
        keys = list(dict.fromkeys(names))
        if not keys:
            raise ValueError(f"register() needs at least one event name for {function!r}")
        injected = inject(self.provider)(function)
        handler = cast(Callable[[Any], None], injected)
        table = self._table()
        for key in keys:
            table.setdefault(key, []).append(handler)
        return injected

    def handler(self, function: Callable[P, R]) -> Callable[P, R]:
        """Register ``function`` on its first parameter's annotation; use as a decorator.

        ``A | B`` and ``typing.Union[A, B]`` register on each member (``None`` is skipped). String annotations
        are resolved with ``typing.get_type_hints``, or read as text when they cannot be.

        Args:
            function: The handler; its first parameter receives the event.

        Returns:
            The injected wrapper, which stays directly callable.

        Raises:
            TypeError: If the first parameter is missing, not annotated, or not annotated with event classes;
                nothing is registered then.
        """
        return self.register(_event_names(function), function)

    def consume(self, message: Any) -> None:
        """Call every handler registered for ``type(message).__name__``, in registration order.

        Args:
            message: The event. A type with no handler is ignored.

        Raises:
            Exception: Whatever a handler raises propagates; later handlers are not called.
        """
        for handler in self._table().get(type(message).__name__, ()):
            handler(message)

    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The routing table, for callers that dispatch by themselves.

        Returns:
            A copy of the ``event type name -> handlers`` table; each handler is the injected wrapper, ready to
            be called with the message.
        """
        return {name: list(handlers) for name, handlers in self._table().items()}


class Producer:
    """Delivers events to registered consumers, in registration order, through their ``consume`` method."""

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []

    @property
    def consumers(self) -> list[Consumer]:
        """A copy of the registered consumers, in registration order."""
        return list(self._consumers)

    def register(self, *consumers: Consumer) -> None:
        """Register consumers; registering one that is already registered does nothing.

        Args:
            *consumers: Objects with a ``consume(message)`` method, usually :class:`Consumer` instances.

        Raises:
            TypeError: If one has no callable ``consume``; none is registered then.
        """
        register_unique(self._consumers, consumers, "consume", "Producer")

    def dispatch(self, message: Any) -> None:
        """Call ``consumer.consume(message)`` on every registered consumer, in registration order.

        Args:
            message: The event.

        Raises:
            Exception: Whatever a consumer raises propagates; later consumers are not called.
        """
        for consumer in self._consumers:
            consumer.consume(message)


@overload
def event(cls: E, /) -> E: ...


@overload
def event(*, frozen: bool = False) -> Callable[[E], E]: ...


@dataclass_transform()
def event(cls: E | None = None, /, *, frozen: bool = False) -> E | Callable[[E], E]:
    """Turn a class into a dataclass event (``slots=True``, as the seed's ``event``); use as ``@event``.

    Args:
        cls: A plain class with annotated fields, or a class that already is a dataclass (returned unchanged).
        frozen: Make the fields read-only; use as ``@event(frozen=True)``.

    Returns:
        The dataclass, or a decorator when called with keyword arguments only.

    Raises:
        TypeError: If ``cls`` is not a class.
    """

    def decorate(target: E) -> E:
        if not isinstance(target, type):
            raise TypeError(f"@event decorates classes, got {target!r}")
        if "__dataclass_fields__" in target.__dict__:
            return target
        return cast(E, dataclasses.dataclass(slots=True, frozen=frozen)(target))

    return decorate if cls is None else decorate(cls)
