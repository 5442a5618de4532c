"""``register``: make a class capture the arguments its instances are built with.

Follows mlregistry 1.2.3's ``register``: the class's ``__init__`` is replaced by a wrapper that runs the original
and then stores the call's arguments on the instance, less the excluded ones; nested registered objects are
stored by name (or name and arguments). It can be called on a class, used as a bare decorator, or used as a
decorator factory with a name and/or exclusions.

What differs from mlregistry 1.2.3, and why:

- Arguments are bound to the signature and stored in signature order (see :mod:`.binding`), so keyword order
  and positional-versus-keyword spelling do not change the hash; exclusions apply however the value is passed.
- A class is wrapped once. Registering it again with the same name and exclusions changes nothing (mlregistry
  wraps again, so each registration adds a layer); registering it again with another name or other exclusions
  raises :class:`~.errors.RegistrationError` instead of quietly giving its instances a second identity.
- Subclasses. An instance is captured by the wrapper of its own class's ``__init__``:

  * a subclass that does not define ``__init__`` inherits the registration, and its instances are captured
    under the subclass's class name (a named registration's name belongs to the registered class only, so
    ``Sub(1)`` and ``Base(1)`` never share a hash);
  * a subclass that defines its own ``__init__`` is not captured until it is registered itself, because the
    arguments reaching the base's ``__init__`` need not be the subclass's hyperparameters (mlregistry would
    record them under the subclass's name); the base wrapper sees that it is not the outermost ``__init__``
    and only runs the original;
  * when both are registered, only the subclass's wrapper captures.

Cost per instantiation: one binding pass over the call's values and one ``object.__setattr__``; the hash is
computed only when asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from torchsystem_trainer.registry.binding import Binder
from torchsystem_trainer.registry.errors import RegistrationError
from torchsystem_trainer.registry.metadata import (
    ARGUMENTS,
    NAME,
    REGISTRATION,
    Registration,
    describe,
    registration_of,
)

__all__ = ["capture", "register"]

C = TypeVar("C", bound=type)

_setattr = object.__setattr__


def _install(registration: Registration) -> None:
    """Replace ``registration.cls.__init__`` by a capturing wrapper."""
    cls = registration.cls
    original = getattr(cls, "__init__")  # noqa: B009 (own or inherited; mypy refuses cls.__init__)
    bind = registration.binder.bind
    name = registration.name

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if type(self).__init__ is not __init__:  # a registered or overriding subclass owns the capture
            original(self, *args, **kwargs)
            return
        arguments = {key: describe(value) for key, value in bind(args, kwargs).items()}
        original(self, *args, **kwargs)
        _setattr(self, ARGUMENTS, arguments)
        if name is not None and type(self) is cls:
            _setattr(self, NAME, name)

    setattr(__init__, REGISTRATION, registration)
    try:
        setattr(cls, "__init__", __init__)  # noqa: B010 (mypy refuses assigning cls.__init__)
    except (TypeError, AttributeError) as error:
        raise RegistrationError(
            f"cannot register {cls.__qualname__}: its __init__ cannot be replaced ({error})"
        ) from error


def capture(
    cls: C,
    name: str | None = None,
    excluded_args: Iterable[int] | None = None,
    excluded_kwargs: Iterable[str] | None = None,
) -> tuple[C, Registration]:
    """Register ``cls`` (once) and return it with its registration; the shared core of every ``register``.

    Args:
        cls: the class to register.
        name: the name its instances carry, or ``None`` for the class name.
        excluded_args: indexes of constructor parameters (after ``self``) never captured.
        excluded_kwargs: names of constructor parameters never captured.

    Returns:
        ``(cls, registration)``.

    Raises:
        TypeError: when ``cls`` is not a class or ``name`` is not a string.
        RegistrationError: for bad exclusions, a conflicting earlier registration of ``cls``, or a class whose
            ``__init__`` cannot be replaced.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register expects a class or a name, got {cls!r} of type {type(cls).__name__}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"the registered name of {cls.__qualname__} must be a non-empty str, got {name!r}")
    binder = Binder.from_init(
        getattr(cls, "__init__"),  # noqa: B009 (mypy refuses cls.__init__)
        cls.__qualname__, tuple(excluded_args or ()), tuple(excluded_kwargs or ())
    )
    registration = Registration(cls=cls, name=name, binder=binder)
    existing = registration_of(cls)
    if existing is not None:
        if not existing.same_as(registration):
            raise RegistrationError(
                f"{cls.__qualname__} is already registered with {existing.describe()}; registering it again "
                f"with {registration.describe()} would give its instances two identities. Register it with "
                "the same name and exclusions everywhere."
            )
        return cls, existing
    _install(registration)
    return cls, registration


@overload
def register(
    cls: C, excluded_args: Iterable[int] | None = None, excluded_kwargs: Iterable[str] | None = None
) -> C: ...


@overload
def register(
    cls: str | None = None,
    excluded_args: Iterable[int] | None = None,
    excluded_kwargs: Iterable[str] | None = None,
) -> Callable[[C], C]: ...


def register(
    cls: type | str | None = None,
    excluded_args: Iterable[int] | None = None,
    excluded_kwargs: Iterable[str] | None = None,
) -> Any:
    """Make instances of a class capture the arguments they are constructed with (mlregistry 1.2.3 ``register``).

    Forms, as in mlregistry: ``register(cls)``, ``register(cls, excluded_args=[0])``, ``@register``,
    ``@register('name')`` (instances are named ``'name'`` for :func:`getname` and :func:`gethash`), and
    ``@register(excluded_args=..., excluded_kwargs=...)``.

    Example:
        >>> from torch.optim import Adam
        >>> register(Adam, excluded_args=[0])  # the parameters are not a hyperparameter
        <class 'torch.optim.adam.Adam'>

    Args:
        cls: the class to register; or the name for its instances (decorator form); or ``None``.
        excluded_args: indexes of constructor parameters, counted after ``self``, never captured.
        excluded_kwargs: names of constructor parameters never captured.

    Returns:
        The class itself (its ``__init__`` now captures), or, given a name or ``None``, a decorator that
        registers the class it is applied to and returns it.

    Raises:
        TypeError: when ``cls`` is neither a class, a string nor ``None``.
        RegistrationError: for exclusions naming no parameter, or when ``cls`` was already registered with
            another name or other exclusions.
    """
    if isinstance(cls, type):
        return capture(cls, None, excluded_args, excluded_kwargs)[0]
    if cls is None or isinstance(cls, str):
        name = cls

        def decorator(klass: C) -> C:
            return capture(klass, name, excluded_args, excluded_kwargs)[0]

        return decorator
    raise TypeError(f"register expects a class, a name (str) or None, got {cls!r} of type {type(cls).__name__}")
