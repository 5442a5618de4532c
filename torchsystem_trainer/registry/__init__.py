"""Registry: give models an identity from their type and hyperparameters (the seed's ``torchsystem.registry``).

A re-implementation of the public API of ``mlregistry`` 1.2.3 (mr-mapache), which TorchSystem re-exports as
``torchsystem.registry``. Hashes agree with mlregistry 1.2.3 for calls written positionally and/or with keywords
in signature order; see :mod:`.binding`, :mod:`.registration` and :mod:`.accessors` for where and why behaviour
goes beyond it.
"""

from torchsystem_trainer.registry.accessors import (
    getarguments,
    getclass,
    gethash,
    getmetadata,
    getname,
    getparameters,
    sethash,
    setname,
)
from torchsystem_trainer.registry.errors import RegistrationError, UnregisteredError
from torchsystem_trainer.registry.registration import register
from torchsystem_trainer.registry.registry import Registry

__all__ = [
    "RegistrationError",
    "Registry",
    "UnregisteredError",
    "getarguments",
    "getclass",
    "gethash",
    "getmetadata",
    "getname",
    "getparameters",
    "register",
    "sethash",
    "setname",
]
