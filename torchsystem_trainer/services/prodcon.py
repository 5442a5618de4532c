"""Producer/Consumer: events routed to handlers by the name of the event's class, as in torchsystem 1.4.9.

A :class:`Consumer` registers each handler on the annotation of the handler's first parameter (every member of
a union), under a key made from the event class's name by its ``generator`` (kebab case by default:
``ModelTrained`` -> ``"model-trained"``). A :class:`Producer` delivers an event to its consumers by calling their
``consume`` and nothing else, so any object with a ``consume(message)`` method can be registered.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, dataclass_transform, overload

from torchsystem_trainer.depends import Depends as Depends
from torchsystem_trainer.depends import Injector, Provider, inject
from torchsystem_trainer.services.registration import register_unique

__all__ = ["Consumer", "Depends", "Producer", "event", "event_key"]

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=type)

Route = tuple[str, "type | None"]
"""An event class's name and the class itself (``None`` when only the name is known)."""

_UNIONS = ("Union", "Optional")
_CONTAINERS = (list, tuple, set, frozenset)
_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")


@functools.cache
def event_key(name: str) -> str:
    """The default key of an event class name: kebab case, as torchsystem 1.4.9's Consumer makes it.

    Args:
        name: a class's ``__name__``, e.g. ``"ModelTrained"``.

    Returns:
        ``"model-trained"``: a hyphen before every capital but the first, then lower case.
    """
    return _CAPITAL.sub("-", name).lower()


def _routes_in_source(text: str, handler: str) -> list[Route]:
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
            return [name for name, _ in _routes_in_source(node.value, handler)]
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

    return [(name, None) for name in walk(tree)]


def _routes_in(annotation: Any, handler: str) -> list[Route]:
    """The events an annotation names: unions give one per member, ``None`` gives none, a generic alias its
    origin; a list, tuple or set of annotations (an extension of ``register``) gives those of every item."""
    if isinstance(annotation, str):
        return _routes_in_source(annotation, handler)
    if isinstance(annotation, typing.ForwardRef):
        return _routes_in_source(annotation.__forward_arg__, handler)
    if annotation is None or annotation is type(None):
        return []
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [route for member in typing.get_args(annotation) for route in _routes_in(member, handler)]
    if origin is typing.Annotated:
        return _routes_in(typing.get_args(annotation)[0], handler)
    if origin is not None:
        annotation = origin
    elif isinstance(annotation, _CONTAINERS):
        return [route for item in annotation for route in _routes_in(item, handler)]
    if annotation is Any or not isinstance(annotation, type):
        raise TypeError(f"handler {handler!r} must annotate its first parameter with event classes, got {annotation!r}")
    return [(annotation.__name__, annotation)]


def _annotation_of(function: Callable[..., Any]) -> Any:
    """The annotation of a handler's first parameter, resolved where it can be."""
    handler = str(getattr(function, "__name__", repr(function)))
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"handler {handler!r} must take the event as its first positional parameter")
    first = parameters[0]
    if first.annotation is inspect.Parameter.empty:
        raise TypeError(f"handler {handler!r} must annotate its first parameter {first.name!r} with the event type")
    try:  # resolves string annotations (from __future__ import annotations) where it can
        return typing.get_type_hints(function).get(first.name, first.annotation)
    except Exception:  # a name only known under TYPE_CHECKING, or a local class: route by the raw text
        return first.annotation


class Consumer(Injector):
    """Calls the handlers registered for an event's class, in registration order.

    Routing is by class *name*, as in torchsystem 1.4.9: a message goes to the handlers filed under
    ``generator(type(message).__name__)``, so a handler written for a class named ``Trained`` also receives any
    other class named ``Trained``, from any module. This lets a consumer be written against the ubiquitous
    language without importing the producer's classes. Subclasses are not routed to their base class's
    handlers; annotate with a union to handle several types.

    Example::

        consumer = Consumer()

        @consumer.handler
        def deliver_metrics(event: Trained | Validated, writer: SummaryWriter = Depends(writer)): ...

        consumer.consume(Trained(model, loader, metrics))  # calls deliver_metrics

    Args:
        name: Optional name, used in error messages.
        provider: Overrides shared with other injectors; this consumer gets its own if None.
        generator: Turns an event class's name into the key its handlers are filed under; :func:`event_key`
            (kebab case, as upstream) by default.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        provider: Provider | None = None,
        generator: Callable[[str], str] = event_key,
    ) -> None:
        super().__init__(provider)
        self.name = name
        self.generator = generator
        # the tables live in the instance under names a subclass will not pick for its own attributes
        self.__dict__.update(_consumer_handlers={}, _consumer_types={}, _consumer_names={})

    def _table(self, attribute: str) -> dict[str, Any]:
        table: dict[str, Any] | None = self.__dict__.get(attribute)
        if table is None:  # a subclass that skipped __init__
            table = self.__dict__[attribute] = {}
        return table

    @property
    def generator(self) -> Callable[[str], str]:
        """The function from an event class's name to its key (:func:`event_key` unless given)."""
        generator: Callable[[str], str] = self.__dict__.get("_consumer_generator", event_key)
        return generator

    @generator.setter
    def generator(self, generator: Callable[[str], str]) -> None:
        if not callable(generator):
            raise TypeError(f"Consumer generator must be callable (str -> str), got {generator!r}")
        self.__dict__["_consumer_generator"] = generator

    @property
    def handlers(self) -> dict[str, list[Callable[[Any], None]]]:
        """The ``key -> injected handlers`` table :meth:`consume` reads: the live dict (as upstream), so handlers
        added or removed there change what a message reaches. A function added directly is called as it is,
        without dependency injection; :meth:`handler` and :meth:`register` inject."""
        return self._table("_consumer_handlers")

    @handlers.setter
    def handlers(self, table: dict[str, list[Callable[[Any], None]]]) -> None:
        self.__dict__["_consumer_handlers"] = table

    @property
    def types(self) -> dict[str, type]:
        """``key -> event class`` for every event registered by its class (as upstream); the live dict.
        An event known only by name (an annotation that could not be resolved) has no entry."""
        return self._table("_consumer_types")

    @types.setter
    def types(self, table: dict[str, type]) -> None:
        self.__dict__["_consumer_types"] = table

    def register(self, annotation: Any, handler: Callable[P, R]) -> Callable[P, R]:
        """Register ``handler`` for the events ``annotation`` names (torchsystem 1.4.9 ``Consumer.register``).

        Args:
            annotation: An event class, a union of them (``A | B``, ``Union[A, B]``, ``Optional[A]``: ``None``
                is skipped), a generic alias (``Batch[int]`` registers ``Batch``), ``Annotated[A, ...]``, the
                text of such an annotation (``"A | B"``, routed by name), or a list, tuple or set of any of these
                (``["Trained", "Validated"]``).
            handler: The handler, called as ``handler(message)`` with dependencies injected.

        Returns:
            The injected wrapper: one wrapper for every event of the annotation (upstream returns the plain
            function for a union, having injected it once per member).

        Raises:
            ValueError: If ``annotation`` is an empty list, tuple or set.
            TypeError: If ``annotation`` names no event class (``None``, ``Any``, something that is not a class)
                or is unreadable text, or ``handler`` is not callable; nothing is registered then.
        """
        label = str(getattr(handler, "__name__", repr(handler)))
        if isinstance(annotation, _CONTAINERS) and not annotation:
            raise ValueError(
                f"register() needs at least one event name or class for handler {label!r}, got {annotation!r}"
            )
        routes = list(dict.fromkeys(_routes_in(annotation, label)))
        if not routes:
            raise TypeError(f"handler {label!r} is registered on no event class: {annotation!r}")
        keys = [(self.generator(name), name, kind) for name, kind in routes]
        injected = inject(self.provider)(handler)
        wrapper = cast(Callable[[Any], None], injected)
        handlers, types_, names = self.handlers, self.types, self._table("_consumer_names")
        for key in dict.fromkeys(key for key, _, _ in keys):
            handlers.setdefault(key, []).append(wrapper)
        for key, name, kind in keys:
            known = names.setdefault(key, [])
            if name not in known:
                known.append(name)
            if kind is not None:
                types_[key] = kind
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
        return self.register(_annotation_of(function), function)

    def consume(self, message: Any) -> None:
        """Call every handler filed under ``generator(type(message).__name__)``, in registration order.

        Args:
            message: The event. A type with no handler is ignored.

        Raises:
            Exception: Whatever a handler raises propagates; later handlers are not called.
        """
        for handler in self.handlers.get(self.generator(type(message).__name__), ()):
            handler(message)

    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The routing table by event class name, for callers that dispatch by themselves (the Trainer).

        Returns:
            A copy: ``event class name -> injected handlers``, for every name registered through
            :meth:`handler` or :meth:`register` and every class in :attr:`types`, each with the handlers filed
            under its key. A key added to :attr:`handlers` directly, with no class in :attr:`types`, has no
            name to list.
        """
        handlers = self.handlers
        table: dict[str, list[Callable[[Any], None]]] = {}
        for key, names in self._table("_consumer_names").items():
            for name in names:
                if handlers.get(key):
                    table[name] = list(handlers[key])
        for key, kind in self.types.items():
            if handlers.get(key) and kind.__name__ not in table:
                table[kind.__name__] = list(handlers[key])
        return table


class Producer:
    """Delivers events to registered consumers, in registration order, through their ``consume`` method.

    Attributes:
        consumers: the registered consumers, in registration order: the live list (as upstream), so a
            consumer appended or removed there changes who :meth:`dispatch` reaches. :meth:`register` checks
            each consumer and skips one already registered; appending directly does neither.
    """

    def __init__(self) -> None:
        self.consumers: list[Consumer] = []

    def register(self, *consumers: Consumer) -> None:
        """Register consumers; registering one that is already registered does nothing.

        Args:
            *consumers: Objects with a ``consume(message)`` method, usually :class:`Consumer` instances.

        Raises:
            TypeError: If one has no callable ``consume``; none is registered then.
        """
        register_unique(self.consumers, consumers, "consume", "Producer")

    def dispatch(self, message: Any) -> None:
        """Call ``consumer.consume(message)`` on every registered consumer, in registration order.

        Args:
            message: The event.

        Raises:
            Exception: Whatever a consumer raises propagates; later consumers are not called.
        """
        for consumer in self.consumers:
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
