"""Read and set the metadata of registered objects: arguments, name, hash.

The hash is mlregistry 1.2.3's, bit for bit::

    md5((getname(obj) + json.dumps(getarguments(obj))).encode()).hexdigest()

``json.dumps`` with its defaults: keys in stored order (not sorted), ``', '`` and ``': '`` separators, ASCII
escapes. The seed's ``MLP(784, 256, 10, dropout=0.5, activation=ReLU())`` hashes to
``af51a51a38f7ad81f9523360fafe7068`` with either implementation. A hash set with :func:`sethash` takes precedence.
"""

from __future__ import annotations

import inspect
import json
from hashlib import md5
from typing import Any, TypeVar

from torchsystem_trainer.registry.errors import UnregisteredError
from torchsystem_trainer.registry.metadata import (
    HASH,
    NAME,
    captured_arguments,
    copy_tree,
    describe,
    explicit_hash,
    find_registration,
    name_of,
)

__all__ = ["getarguments", "getclass", "gethash", "getmetadata", "getname", "getparameters", "sethash", "setname"]

T = TypeVar("T")


def _unregistered(obj: object, wanted: str) -> UnregisteredError:
    """Explain why ``obj`` has no captured arguments, naming its class and the fix."""
    cls = type(obj)
    name = cls.__qualname__
    registration = find_registration(cls)
    if registration is None:
        reason = f"{name} is not registered: call register({cls.__name__}) before creating instances"
    elif cls.__init__ is registration.cls.__dict__.get("__init__"):
        reason = (
            f"this {name} instance was not built by its registered __init__ (created before "
            f"register({registration.cls.__name__}), or built without calling __init__)"
        )
    else:
        reason = (
            f"{name} overrides the __init__ of the registered {registration.cls.__qualname__}, so its own "
            f"arguments are not captured: call register({cls.__name__})"
        )
    return UnregisteredError(f"cannot get the {wanted} of {obj.__class__.__name__} object: {reason}")


def getarguments(obj: object) -> dict[str, Any]:
    """The arguments the object was constructed with, as captured by its registered ``__init__``.

    As in mlregistry 1.2.3: excluded parameters and defaults that were not passed are absent, and registered
    objects passed as arguments appear by name (``'ReLU'``) or as ``{'name': ..., 'arguments': ...}``.
    Beyond mlregistry, the order is the signature's and a fresh copy is returned each time.

    Args:
        obj: an instance of a registered class.

    Returns:
        ``{parameter name: value}``, e.g. ``{'input_size': 784, ..., 'activation': 'ReLU'}``.

    Raises:
        UnregisteredError: when nothing was captured for ``obj``; the message names its class and says to call
            ``register(cls)``. (mlregistry 1.2.3 raises ``AttributeError``.)
    """
    arguments = captured_arguments(obj)
    if arguments is None:
        raise _unregistered(obj, "arguments")
    result: dict[str, Any] = copy_tree(arguments)
    return result


def getname(obj: object) -> str:
    """The object's name: set by ``register('name')`` or :func:`setname`, else its class name (mlregistry 1.2.3).

    Args:
        obj: any object; registration is not required.

    Returns:
        The name.

    Raises:
        Nothing.
    """
    return name_of(obj)


def gethash(obj: object) -> str:
    """The object's locally unique identifier: md5 of its name and the JSON of its arguments (mlregistry 1.2.3).

    Computed on each call as ``md5((getname(obj) + json.dumps(getarguments(obj))).encode()).hexdigest()``,
    unless a hash was set with :func:`sethash`.

    Args:
        obj: an instance of a registered class, or any object given a hash with :func:`sethash`.

    Returns:
        32 lowercase hex digits.

    Raises:
        UnregisteredError: when ``obj`` has neither captured arguments nor a set hash.
        TypeError: when an argument cannot be written as JSON (a tensor, an unregistered object); exclude it
            at registration or register its class.
    """
    fixed = explicit_hash(obj)
    if fixed is not None:
        return fixed
    arguments = captured_arguments(obj)
    if arguments is None:
        raise _unregistered(obj, "hash")
    name = name_of(obj)
    try:
        text = json.dumps(arguments)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"cannot hash {name}: its captured arguments are not JSON-serializable ({error}); exclude that "
            "argument with excluded_args/excluded_kwargs, or register its class"
        ) from error
    return md5((name + text).encode()).hexdigest()


def sethash(obj: object, hash: str | None = None) -> None:
    """Fix the object's hash (mlregistry 1.2.3 ``sethash``).

    Args:
        obj: the object; registration is required only when ``hash`` is ``None``.
        hash: the hash to use from now on; ``None`` freezes the current :func:`gethash`, so later
            :func:`setname` calls no longer change it.

    Returns:
        None.

    Raises:
        ValueError: when ``hash`` is an empty string.
        TypeError: when ``hash`` is not a string.
        UnregisteredError: when ``hash`` is ``None`` and ``obj`` has no captured arguments.
    """
    if hash is None:
        hash = gethash(obj)
    elif not isinstance(hash, str):
        raise TypeError(f"sethash expects a str hash, got {hash!r} of type {type(hash).__name__}")
    elif not hash:
        raise ValueError(f"sethash got an empty hash for {type(obj).__name__}; pass a non-empty str or None")
    object.__setattr__(obj, HASH, hash)


def setname(obj: object, name: str | None = None) -> None:
    """Set the object's name, which :func:`gethash` uses unless a hash is set (mlregistry 1.2.3 ``setname``).

    Args:
        obj: any object.
        name: the new name; ``None`` freezes the current :func:`getname` on the instance.

    Returns:
        None.

    Raises:
        ValueError: when ``name`` is an empty string.
        TypeError: when ``name`` is not a string.
    """
    if name is None:
        name = name_of(obj)
    elif not isinstance(name, str):
        raise TypeError(f"setname expects a str name, got {name!r} of type {type(name).__name__}")
    elif not name:
        raise ValueError(f"setname got an empty name for {type(obj).__name__}; pass a non-empty str or None")
    object.__setattr__(obj, NAME, name)


def getmetadata(obj: object) -> dict[str, Any]:
    """The object's metadata: ``{'hash': ..., 'name': ..., 'arguments': ...}``, a fresh copy.

    mlregistry 1.2.3 returns the same keys in the same order, but includes ``'hash'`` only after
    :func:`sethash` and ``'name'`` only after ``register('name')`` / :func:`setname`. Here ``'hash'`` and
    ``'name'`` are always present (computed when not set), so a caller can always read the identity.
    ``'arguments'`` is absent only for an unregistered object that was given a hash with :func:`sethash`.

    Args:
        obj: an instance of a registered class, or an object given a hash with :func:`sethash`.

    Returns:
        The metadata dictionary.

    Raises:
        UnregisteredError: when ``obj`` has neither captured arguments nor a set hash.
        TypeError: when the hash must be computed and an argument cannot be written as JSON.
    """
    arguments = captured_arguments(obj)
    if arguments is None and explicit_hash(obj) is None:
        raise _unregistered(obj, "metadata")
    metadata: dict[str, Any] = {"hash": gethash(obj), "name": name_of(obj)}
    if arguments is not None:
        metadata["arguments"] = copy_tree(arguments)
    return metadata


def getclass(obj: T) -> type[T]:
    """The class a registered object was built as, to rebuild it with ``getclass(obj)(**arguments)``.

    Not part of mlregistry 1.2.3; the seed's registry example imports it from ``torchsystem.registry``.

    Args:
        obj: an instance of a registered class.

    Returns:
        ``type(obj)``.

    Raises:
        UnregisteredError: when nothing was captured for ``obj``.
    """
    if captured_arguments(obj) is None:
        raise _unregistered(obj, "class")
    return type(obj)


def getparameters(obj: object) -> dict[str, Any]:
    """The object's full constructor signature: the captured arguments, plus the default of every parameter that
    was not passed. What a person comparing runs wants (``MLP(64, 32, 10)`` shows its ``dropout=0.0`` too), where
    :func:`getarguments` keeps only what was passed, as the hash needs.

    Excluded parameters stay out. A default that is an instance of a registered class is described as
    :func:`getarguments` describes arguments (its name, or ``{'name': ..., 'arguments': ...}``); other defaults
    are returned as they are. Not part of mlregistry 1.2.3.

    Args:
        obj: an instance of a registered class.

    Returns:
        ``{parameter name: value}`` in signature order, then what ``*args``/``**kwargs`` captured; a fresh copy.

    Raises:
        UnregisteredError: when nothing was captured for ``obj``.
    """
    arguments = captured_arguments(obj)
    if arguments is None:
        raise _unregistered(obj, "parameters")
    registration = find_registration(type(obj))
    full: dict[str, Any] = {}
    if registration is not None:
        binder = registration.binder
        for parameter in binder.parameters:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in binder.excluded:
                continue
            if parameter.name in arguments:
                full[parameter.name] = copy_tree(arguments[parameter.name])
            elif parameter.default is not inspect.Parameter.empty:
                full[parameter.name] = describe(parameter.default)
    for name, value in arguments.items():  # *args and **kwargs, or every argument of an unknown registration
        if name not in full:
            full[name] = copy_tree(value)
    return full
