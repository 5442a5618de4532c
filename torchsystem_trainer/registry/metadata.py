"""Where captured metadata lives, and how arguments are described.

The metadata sits in the instance's ``__dict__`` under mlregistry 1.2.3's attribute names
(``__model__arguments__``, ``__model__name__``, ``__model__hash__``), so it travels with the object through
``pickle``, ``copy.deepcopy`` and ``torch.save``, and objects pickled by mlregistry read back here. It is written
with ``object.__setattr__``: no ``nn.Module.__setattr__`` bookkeeping, and frozen dataclasses can be registered.

A class's registration is recorded on the ``__init__`` wrapper that registration installs, never as a class
attribute, so subclasses do not inherit it by attribute lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchsystem_trainer.registry.binding import Binder

__all__ = [
    "ARGUMENTS",
    "HASH",
    "NAME",
    "REGISTRATION",
    "Registration",
    "captured_arguments",
    "copy_tree",
    "describe",
    "explicit_hash",
    "find_registration",
    "name_of",
    "registration_of",
]

ARGUMENTS = "__model__arguments__"
NAME = "__model__name__"
HASH = "__model__hash__"
REGISTRATION = "__registration__"

_SCALARS = (int, float, str, bool, type(None))


@dataclass(frozen=True, slots=True)
class Registration:
    """How one class captures its constructor arguments.

    Attributes:
        cls: the registered class.
        name: the name its instances carry (``register('name')``), or ``None`` for the class name.
        binder: its constructor's parameters and exclusions.
    """

    cls: type
    name: str | None
    binder: Binder

    def same_as(self, other: Registration) -> bool:
        """Whether two registrations give instances the same identity (same name, same exclusions)."""
        return self.name == other.name and self.binder.excluded == other.binder.excluded

    def describe(self) -> str:
        """``name=..., excluded=[...]``, for error messages."""
        return f"name={self.name!r}, excluded={sorted(self.binder.excluded)}"


def registration_of(cls: type) -> Registration | None:
    """The registration of ``cls`` itself (not of a base class), or ``None``."""
    registration = getattr(cls.__dict__.get("__init__"), REGISTRATION, None)
    return registration if isinstance(registration, Registration) else None


def find_registration(cls: type) -> Registration | None:
    """The registration of ``cls`` or of its nearest registered base class, or ``None``."""
    for klass in cls.__mro__:
        registration = registration_of(klass)
        if registration is not None:
            return registration
    return None


def _instance_dict(obj: object) -> dict[str, Any]:
    try:
        return vars(obj)
    except TypeError:  # __slots__ without __dict__
        return {}


def captured_arguments(obj: object) -> dict[str, Any] | None:
    """The stored (not copied) captured arguments of ``obj``, or ``None`` when nothing was captured."""
    arguments = _instance_dict(obj).get(ARGUMENTS)
    return arguments if isinstance(arguments, dict) else None


def explicit_hash(obj: object) -> str | None:
    """The hash set with ``sethash``, or ``None``."""
    value = _instance_dict(obj).get(HASH)
    return value if isinstance(value, str) else None


def name_of(obj: object) -> str:
    """The name set by a named registration or ``setname``, else the class name (mlregistry 1.2.3 ``getname``)."""
    value = _instance_dict(obj).get(NAME)
    return value if isinstance(value, str) else type(obj).__name__


def copy_tree(value: Any) -> Any:
    """Copy the dicts, lists and tuples of a captured value; leaves are shared, not copied."""
    kind = type(value)
    if kind is dict:
        return {key: copy_tree(item) for key, item in value.items()}
    if kind is list:
        return [copy_tree(item) for item in value]
    if kind is tuple:
        return tuple(copy_tree(item) for item in value)
    return value


def describe(value: Any) -> Any:
    """The captured form of one argument value.

    As in mlregistry 1.2.3 (``core.handle_arg``), an instance of a registered class is replaced by its name when
    it captured no arguments (``ReLU()`` becomes ``'ReLU'``), and by ``{'name': ..., 'arguments': {...}}`` when it
    did. Beyond mlregistry, plain lists, tuples and dicts are walked, so registered objects inside them are
    described too (mlregistry would store the objects themselves, which then cannot be hashed). Everything else
    is stored as passed, by reference; mlregistry 1.2.3 stores a deep copy.

    Args:
        value: an argument of a constructor call.

    Returns:
        The value to store.

    Raises:
        Nothing.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {key: describe(item) for key, item in value.items()}
    if kind is list:
        return [describe(item) for item in value]
    if kind is tuple:
        return tuple(describe(item) for item in value)
    arguments = captured_arguments(value)
    if arguments is None:
        return value
    if not arguments:
        return name_of(value)
    return {"name": name_of(value), "arguments": copy_tree(arguments)}
