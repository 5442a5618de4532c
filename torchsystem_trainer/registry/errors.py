"""Errors raised by the registry.

mlregistry 1.2.3 raises a bare ``AttributeError`` when an object was never registered. This package raises
:class:`UnregisteredError`, a ``TypeError``, instead: the seed's aggregates compute their identity in a property
(``return gethash(self.nn)``), and an ``AttributeError`` escaping a property of an ``nn.Module`` is swallowed by
``Module.__getattr__``, which then reports that the *property* does not exist. A ``TypeError`` reaches the caller
with its message intact.
"""

from __future__ import annotations

__all__ = ["RegistrationError", "UnregisteredError"]


class UnregisteredError(TypeError):
    """An object's captured metadata was asked for, but its class's ``__init__`` never captured any.

    The message names the object's class and says what to do (usually: call ``register(cls)`` before
    creating instances).
    """


class RegistrationError(ValueError):
    """A class cannot be registered as asked.

    Raised for exclusions that name no parameter of the constructor, for a second registration of a class that
    disagrees with the first (another name or other exclusions would give the same objects two identities),
    and for a :class:`~torchsystem_trainer.registry.Registry` name already taken by another class.
    """
