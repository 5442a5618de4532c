"""``Service``: stateless domain operations registered and invoked by name, with dependency injection.

As in the seed, a service groups handlers named in the domain's ubiquitous language (``iterate``, ``train``,
``validate``) and can invoke them by name (``service.handle("train", ...)``), which suits command-style
interfaces such as a CLI or a REST API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from torchsystem_trainer.depends import Depends as Depends
from torchsystem_trainer.depends import Injector, Provider, inject

__all__ = ["Depends", "Service", "kebab_case"]

P = ParamSpec("P")
R = TypeVar("R")


def kebab_case(name: str) -> str:
    """The default name generator: ``"train_model"`` becomes ``"train-model"`` (as the seed's Service does).

    Args:
        name: A function's ``__name__``.

    Returns:
        ``name`` with underscores replaced by hyphens.
    """
    return name.replace("_", "-")


class Service(Injector):
    """A named set of handlers: stateless operations that receive their dependencies by injection.

    Example::

        service = Service()

        def device() -> str:
            raise NotImplementedError

        @service.handler
        def train_model(model, loader, device: str = Depends(device)): ...

        service.dependency_overrides[device] = lambda: "cpu"
        service.handle("train-model", model, loader)  # or train_model(model, loader)

    Attributes:
        handlers: the ``name -> injected handler`` table, in registration order: the live dict (as upstream), so
            an entry added or removed there changes what :meth:`handle` finds. A function added directly is called
            as it is, without dependency injection; :meth:`handler` injects.

    Args:
        name: Optional name, used in error messages.
        provider: Overrides shared with other injectors; this service gets its own if None.
        generator: Turns a handler's ``__name__`` into the name it is registered under.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        provider: Provider | None = None,
        generator: Callable[[str], str] = kebab_case,
    ) -> None:
        super().__init__(provider)
        self.name = name
        self.generator = generator
        self.handlers: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return f"Service({self.name!r})" if self.name is not None else "Service()"

    def handler(self, function: Callable[P, R]) -> Callable[P, R]:
        """Register ``function`` under ``generator(function.__name__)``; use as a decorator.

        Args:
            function: The handler. Its ``Depends`` parameters are resolved with this service's overrides.

        Returns:
            The injected wrapper, which stays directly callable: ``train(model, loader)`` injects as
            ``service.handle("train", model, loader)`` does.

        Raises:
            ValueError: If a handler is already registered under the same generated name (torchsystem 1.4.9
                replaces it silently; remove the old one from :attr:`handlers` first to replace it).
        """
        name = self.generator(getattr(function, "__name__", type(function).__name__))
        if name in self.handlers:
            raise ValueError(f"{self!r} already has a handler named {name!r}: give {function!r} another name")
        injected = inject(self.provider)(function)
        self.handlers[name] = injected
        return injected

    def handle(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Invoke the handler registered under ``name``.

        Args:
            name: The generated name, e.g. ``"train-model"`` for ``train_model``.
            *args: Positional arguments for the handler.
            **kwargs: Keyword arguments for the handler; explicit arguments win over dependencies.

        Returns:
            What the handler returns.

        Raises:
            KeyError: If no handler is registered under ``name``; the message lists the known names.
        """
        try:
            handler = self.handlers[name]
        except KeyError:
            known = ", ".join(repr(key) for key in self.handlers) or "none"
            raise KeyError(f"{self!r} has no handler named {name!r}; known handlers: {known}") from None
        return handler(*args, **kwargs)
