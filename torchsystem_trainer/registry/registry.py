"""``Registry``: a named collection of registered classes (mlregistry 1.2.3 / torchsystem 1.4.9 ``Registry``).

Registering a class in a :class:`Registry` registers it exactly as :func:`~.registration.register` does (its
instances capture their arguments) and also files it under its name, so it can be looked up by name (from a
configuration file, a REST request) together with its signature. As torchsystem 1.4.9's copy of the registry
does, a registered :class:`torch.nn.Module` subclass is also added to torch's safe globals, so a whole module of
that class saved with ``torch.save`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

import torch.serialization
from torch.nn import Module

from torchsystem_trainer.registry.errors import RegistrationError
from torchsystem_trainer.registry.metadata import Registration
from torchsystem_trainer.registry.registration import capture

__all__ = ["Registry"]

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Classes filed by name, with the signatures their instances are captured with.

    ``T`` only documents what the registry holds (``Registry[Module]()``), as in mlregistry 1.2.3.

    Example:
        >>> from torch.nn import Module
        >>> models = Registry[Module]()
        >>> @models.register
        ... class Perceptron(Module):
        ...     def __init__(self, inputs: int, outputs: int):
        ...         super().__init__()
        >>> models.keys()
        ['Perceptron']
        >>> models.signature('Perceptron')
        {'inputs': 'int', 'outputs': 'int'}

    Attributes:
        types: ``{name: class}`` in registration order.
        signatures: ``{name: {parameter: annotation name}}``.
    """

    def __init__(self) -> None:
        self.types: dict[str, type[T]] = {}
        self.signatures: dict[str, dict[str, str]] = {}

    def _file(self, cls: type, registration: Registration) -> None:
        key = registration.name or cls.__name__
        self.types[key] = cls
        self.signatures[key] = registration.binder.signature()

    def _check_free(self, cls: type, key: str) -> None:
        taken = self.types.get(key)
        if taken is not None and taken is not cls:
            raise RegistrationError(
                f"the name {key!r} is already taken in this registry by {taken.__module__}.{taken.__qualname__}; "
                f"register {cls.__module__}.{cls.__qualname__} under another name with register('other name')"
            )

    def _add(
        self, cls: C, name: str | None, excluded_args: Iterable[int] | None, excluded_kwargs: Iterable[str] | None
    ) -> C:
        if not isinstance(cls, type):
            raise TypeError(f"Registry.register expects a class, got {cls!r} of type {type(cls).__name__}")
        self._check_free(cls, name or cls.__name__)  # before touching the class: all or nothing
        cls, registration = capture(cls, name, excluded_args, excluded_kwargs)
        self._file(cls, registration)
        if issubclass(cls, Module):
            _allow_weights_only_loading(cls)
        return cls

    @overload
    def register(
        self, cls: C, excluded_args: Iterable[int] | None = None, excluded_kwargs: Iterable[str] | None = None
    ) -> C: ...

    @overload
    def register(
        self,
        cls: str | None = None,
        excluded_args: Iterable[int] | None = None,
        excluded_kwargs: Iterable[str] | None = None,
    ) -> Callable[[C], C]: ...

    def register(
        self,
        cls: type | str | None = None,
        excluded_args: Iterable[int] | None = None,
        excluded_kwargs: Iterable[str] | None = None,
    ) -> Any:
        """Register a class and file it under its name (mlregistry 1.2.3 ``Registry.register``).

        Same forms as :func:`~.registration.register`: ``registry.register(cls, ...)``, ``@registry.register``,
        ``@registry.register('name')``, ``@registry.register(excluded_args=[0])``. A named class is filed under
        that name and its instances carry it. An :class:`torch.nn.Module` subclass is added to torch's safe
        globals (``torch.serialization.add_safe_globals``, as torchsystem 1.4.9 does), so whole modules of that
        class load with ``torch.load(weights_only=True)`` when everything they hold is itself loadable that way.
        Unlike mlregistry 1.2.3, the decorator forms return the class (mlregistry's returns ``None``), and a
        name already filed for another class is an error rather than a silent overwrite.

        Args:
            cls: the class; or its name in this registry (decorator form); or ``None``.
            excluded_args: indexes of constructor parameters, counted after ``self``, never captured.
            excluded_kwargs: names of constructor parameters never captured.

        Returns:
            The class, or a decorator that registers the class it is applied to and returns it.

        Raises:
            TypeError: when ``cls`` is neither a class, a string nor ``None``.
            RegistrationError: when the name is taken by another class in this registry, an exclusion names no
                parameter, or the class was registered elsewhere with another name or other exclusions.
        """
        if isinstance(cls, type):
            return self._add(cls, None, excluded_args, excluded_kwargs)
        if cls is None or isinstance(cls, str):
            name = cls

            def decorator(klass: C) -> C:
                return self._add(klass, name, excluded_args, excluded_kwargs)

            return decorator
        raise TypeError(
            f"Registry.register expects a class, a name (str) or None, got {cls!r} of type {type(cls).__name__}"
        )

    def get(self, name: str) -> type[T] | None:
        """The class filed under ``name``, or ``None`` (as mlregistry 1.2.3).

        Args:
            name: a name from :meth:`keys`.

        Returns:
            The class, or ``None`` when nothing is filed under ``name``.

        Raises:
            Nothing.
        """
        return self.types.get(name)

    def keys(self) -> list[str]:
        """The filed names, in registration order.

        Returns:
            A new list of names.

        Raises:
            Nothing.
        """
        return list(self.types)

    def signature(self, name: str) -> dict[str, str] | None:
        """The signature of the class filed under ``name`` (mlregistry 1.2.3 ``Registry.signature``).

        Parameter names map to annotation names as strings (``'int'``, ``'Module'``; ``'Any'`` when not
        annotated), in signature order, without excluded parameters. The seed prints this as
        ``{'input_size': int, ..., 'activation': 'Module'}``; mlregistry 1.2.3 returns ``'int'`` (it stores
        ``annotation.__name__``), and so does this.

        Args:
            name: a name from :meth:`keys`.

        Returns:
            A copy of the signature, or ``None`` when nothing is filed under ``name``.

        Raises:
            Nothing.
        """
        signature = self.signatures.get(name)
        return None if signature is None else dict(signature)

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __len__(self) -> int:
        return len(self.types)

    def __repr__(self) -> str:
        return f"Registry({self.keys()})"


def _allow_weights_only_loading(cls: type) -> None:
    """Add ``cls`` to torch's safe globals, unless it is there already (the list is process-wide)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 has no allowlist: weights_only loading of a whole module is impossible there
        return
    if cls not in torch.serialization.get_safe_globals():
        add([cls])
