"""Dependency injection: ``Depends`` markers resolved at call time, with overrides.

A handler declares what it needs as parameter defaults, in the style of FastAPI's ``Depends``, which the seed
follows::

    def device() -> str:
        raise NotImplementedError("bound in the application layer")

    @service.handler
    def train(model, loader, device: str = Depends(device)): ...

    service.dependency_overrides[device] = lambda: "cuda"

Rules, for one call of an injected function:

* a parameter passed explicitly (positionally or by keyword) is never resolved;
* every other ``Depends`` parameter is resolved by calling ``provider.dependency_overrides.get(dep, dep)``;
  that callable's own ``Depends`` parameters are resolved first, with the same overrides (nested dependencies);
* each dependency is called at most once per call; later uses reuse the value (FastAPI's ``use_cache``);
* a dependency that returns a generator is advanced to its first ``yield``; the code after the ``yield`` runs
  once the call has returned or raised, in reverse order of entry (an ``ExitStack``). Unlike FastAPI, the
  handler's exception is not thrown into the generator, so a plain ``yield writer; writer.close()`` (the seed's
  ``summary_writer``) cleans up even when the call fails.

Signatures are read once, when a function is decorated; a function without ``Depends`` parameters gets a wrapper
that only forwards the call.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable, Generator
from contextlib import ExitStack
from functools import wraps
from typing import Any, ParamSpec, TypeVar

__all__ = ["Dependency", "Depends", "Injector", "Provider", "inject"]

P = ParamSpec("P")
R = TypeVar("R")

DependencyOverrides = dict[Callable[..., Any], Callable[..., Any]]

_KEYWORD_ONLY = sys.maxsize  # position of a parameter that can never be filled positionally


def _name_of(function: Any) -> str:
    return str(getattr(function, "__name__", repr(function)))


def _check_override(dependency: Callable[..., Any], implementation: Any) -> None:
    if not callable(implementation):
        raise TypeError(f"the override of {_name_of(dependency)!r} must be callable, got {implementation!r}")


class Dependency:
    """The marker that :func:`Depends` puts in a parameter's default.

    Args:
        dependency: The callable that provides the value, and the key under which it can be overridden.
        use_cache: Whether the value is shared by every use of ``dependency`` within one call.
    """

    __slots__ = ("dependency", "use_cache")

    def __init__(self, dependency: Callable[..., Any], *, use_cache: bool = True) -> None:
        self.dependency = dependency
        self.use_cache = use_cache

    @property
    def callable(self) -> Callable[..., Any]:
        """``dependency``, under the name torchsystem 1.4.9's ``Dependency`` gives it."""
        return self.dependency

    def __repr__(self) -> str:
        return f"Depends({_name_of(self.dependency)})"


def Depends(dependency: Callable[..., Any], *, use_cache: bool = True) -> Any:  # the seed's name
    """Declare a parameter whose value ``dependency`` provides at call time (as FastAPI's ``Depends``).

    Args:
        dependency: A callable, or a generator function whose code after ``yield`` is cleanup.
        use_cache: Resolve ``dependency`` once per call and share the value (default), or call it for every use.

    Returns:
        A :class:`Dependency` marker, typed ``Any`` so that ``device: str = Depends(device)`` type-checks.

    Raises:
        TypeError: If ``dependency`` is not callable.
    """
    if not callable(dependency):
        raise TypeError(f"Depends() needs a callable, got {dependency!r}")
    return Dependency(dependency, use_cache=use_cache)


class Provider:
    """Holds the overrides that injected functions consult at call time.

    Args:
        name: How error messages refer to the owner of the overrides, as in
            ``"override it with service.dependency_overrides[device] = ..."``.
    """

    def __init__(self, name: str = "provider") -> None:
        self.name = name
        self.dependency_overrides: DependencyOverrides = {}

    def override(self, dependency: Callable[..., Any], implementation: Callable[..., Any]) -> None:
        """Make ``implementation`` provide the values of ``dependency`` from the next call on.

        Args:
            dependency: The callable named in ``Depends(...)``.
            implementation: The callable to call instead; it may have ``Depends`` parameters of its own.

        Raises:
            TypeError: If ``implementation`` is not callable.
        """
        _check_override(dependency, implementation)
        self.dependency_overrides[dependency] = implementation


class Injector:
    """Base of the objects that inject their handlers: ``Service``, ``Consumer``, ``Subscriber``, ``Compiler``.

    A subclass that skips ``__init__`` still works: the provider is created on first use.

    Args:
        provider: Overrides to share with other injectors; a fresh :class:`Provider` named after the class if None.
    """

    def __init__(self, provider: Provider | None = None) -> None:
        self._provider = provider if provider is not None else Provider(type(self).__name__.lower())

    @property
    def provider(self) -> Provider:
        """The :class:`Provider` whose overrides this object's handlers use."""
        provider: Provider | None = getattr(self, "_provider", None)
        if provider is None:
            provider = self._provider = Provider(type(self).__name__.lower())
        return provider

    @property
    def dependency_overrides(self) -> DependencyOverrides:
        """The ``dependency -> implementation`` dict, read at every call (late binding, as in FastAPI)."""
        return self.provider.dependency_overrides

    @dependency_overrides.setter
    def dependency_overrides(self, overrides: DependencyOverrides) -> None:
        self.provider.dependency_overrides = overrides

    def override(self, dependency: Callable[..., Any], implementation: Callable[..., Any]) -> None:
        """Same as ``self.dependency_overrides[dependency] = implementation``, checked.

        Args:
            dependency: The callable named in ``Depends(...)``.
            implementation: The callable to call instead.

        Raises:
            TypeError: If ``implementation`` is not callable.
        """
        _check_override(dependency, implementation)
        self.dependency_overrides[dependency] = implementation


class _Slot:
    """A ``Depends`` parameter: its name, its index among positional parameters, and its marker."""

    __slots__ = ("marker", "name", "position", "positional_only")

    def __init__(self, parameter: inspect.Parameter, position: int) -> None:
        kind = parameter.kind
        self.name = parameter.name
        self.positional_only = kind is inspect.Parameter.POSITIONAL_ONLY
        positional = self.positional_only or kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        self.position = position if positional else _KEYWORD_ONLY
        self.marker: Dependency = parameter.default


class _Plan:
    """What injection needs to know about a callable, computed once from its signature."""

    __slots__ = ("positional_only", "signature", "slots")

    def __init__(self, function: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(function)
        except (TypeError, ValueError):  # some builtins have no signature: nothing to inject
            self.signature = None
        parameters = self.signature.parameters.values() if self.signature is not None else ()
        self.slots = tuple(
            _Slot(parameter, position)
            for position, parameter in enumerate(parameters)
            if isinstance(parameter.default, Dependency)
        )
        self.positional_only = any(slot.positional_only for slot in self.slots)


_plans: weakref.WeakKeyDictionary[Callable[..., Any], _Plan] = weakref.WeakKeyDictionary()


def _plan_of(function: Callable[..., Any]) -> _Plan:
    """The plan of a dependency implementation, cached because overrides are looked up on every call."""
    try:
        return _plans[function]
    except KeyError:
        plan = _plans[function] = _Plan(function)
        return plan
    except TypeError:  # not weak-referenceable (a builtin): plan it every time
        return _Plan(function)


def _finish(generator: Generator[Any, Any, Any], name: str) -> None:
    """Run a generator dependency's code after its ``yield``."""
    try:
        next(generator)
    except StopIteration:
        return
    generator.close()
    raise RuntimeError(f"generator dependency {name!r} yielded more than once")


class _Resolution:
    """The state of one injected call: overrides, cleanup stack and the per-call cache of values."""

    __slots__ = ("cache", "handler", "provider", "resolving", "stack")

    def __init__(self, provider: Provider, handler: str) -> None:
        self.provider = provider
        self.handler = handler
        self.stack: ExitStack | None = None  # created by the first generator dependency
        self.cache: dict[Callable[..., Any], Any] = {}
        self.resolving: list[Callable[..., Any]] = []

    def fill(
        self, plan: _Plan, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Add the values of the ``Depends`` parameters that the caller did not pass."""
        count = len(args)
        positional: dict[str, Any] = {}
        for slot in plan.slots:
            if slot.position < count or slot.name in kwargs:
                continue
            value = self.resolve(slot.marker)
            if slot.positional_only:
                positional[slot.name] = value
            else:
                kwargs[slot.name] = value
        if positional and plan.signature is not None:
            bound = plan.signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            bound.arguments.update(positional)
            return bound.args, bound.kwargs
        return args, kwargs

    def resolve(self, marker: Dependency) -> Any:
        """Return the value of one dependency, calling (and entering) its implementation if needed."""
        dependency = marker.dependency
        if marker.use_cache and dependency in self.cache:
            return self.cache[dependency]
        if dependency in self.resolving:
            cycle = " -> ".join(_name_of(item) for item in [*self.resolving, dependency])
            raise RecursionError(f"dependencies of handler {self.handler!r} form a cycle: {cycle}")
        implementation = self.provider.dependency_overrides.get(dependency, dependency)
        self.resolving.append(dependency)
        try:
            plan = _plan_of(implementation)
            args, kwargs = self.fill(plan, (), {}) if plan.slots else ((), {})
            try:
                value = implementation(*args, **kwargs)
                if inspect.isgenerator(value):
                    value = self.enter(value, dependency)
            except NotImplementedError as error:
                name = _name_of(dependency)
                raise NotImplementedError(
                    f"dependency {name!r} of handler {self.handler!r} is not implemented: override it with "
                    f"{self.provider.name}.dependency_overrides[{name}] = ..."
                ) from error
        finally:
            self.resolving.pop()
        if marker.use_cache:
            self.cache[dependency] = value
        return value

    def enter(self, generator: Generator[Any, Any, Any], dependency: Callable[..., Any]) -> Any:
        """Advance a generator dependency to its ``yield`` and schedule the rest as cleanup."""
        name = _name_of(dependency)
        try:
            value = next(generator)
        except StopIteration:
            raise RuntimeError(f"generator dependency {name!r} of handler {self.handler!r} did not yield") from None
        if self.stack is None:
            self.stack = ExitStack()
        self.stack.callback(_finish, generator, name)
        return value

    def close(self) -> None:
        """Run the cleanup of the generator dependencies entered so far, last entered first."""
        if self.stack is not None:
            self.stack.close()


def inject(provider: Provider) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a decorator that resolves ``Depends`` parameters with ``provider``'s overrides.

    The signature is read once, here; the overrides are read at every call, so they may be set after decoration.

    Args:
        provider: The overrides to use.

    Returns:
        A decorator whose wrapper (``functools.wraps``) takes the same arguments as the function.
        Calling the wrapper raises what the function raises, and also:
        ``NotImplementedError`` naming the dependency and the handler when a dependency raises it (chained from
        the original), ``RecursionError`` when dependencies form a cycle, ``RuntimeError`` when a generator
        dependency yields zero times or more than once.

    Raises:
        TypeError: If the decorated object is not callable.
    """

    def decorator(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise TypeError(f"inject() can only decorate a callable, got {function!r}")
        plan = _Plan(function)
        if not plan.slots:

            @wraps(function)
            def forward(*args: P.args, **kwargs: P.kwargs) -> R:
                return function(*args, **kwargs)

            return forward

        slots = plan.slots
        handler = _name_of(function)

        @wraps(function)
        def injected(*args: P.args, **kwargs: P.kwargs) -> R:
            count = len(args)
            for slot in slots:
                if slot.position >= count and slot.name not in kwargs:
                    break
            else:  # every dependency was passed explicitly
                return function(*args, **kwargs)
            resolution = _Resolution(provider, handler)
            try:
                filled, named = resolution.fill(plan, args, kwargs)
                return function(*filled, **named)
            finally:  # also when resolving or calling raised
                resolution.close()

        return injected

    return decorator
