"""``Compiler``: build an aggregate through a pipeline of injected steps, as in the seed.

Building a model for training is several steps (construct, move to a device, ``torch.compile``, restore the
epoch...), some of which need runtime information. A :class:`Compiler` runs the steps in order and injects their
dependencies, so the application layer decides devices and storage by overriding them::

    compiler = Compiler[Classifier]()

    @compiler.step
    def build_classifier(nn: Module, criterion: Module, optimizer: Optimizer):
        return Classifier(nn, criterion, optimizer)

    @compiler.step
    def move_to_device(classifier: Classifier, device: str = Depends(device)):
        return classifier.to(device)

    compiler.dependency_overrides[device] = lambda: "cpu"
    classifier = compiler.compile(nn, criterion, optimizer)

``compile`` in this module is :func:`torch.compile` and ``Depends`` is :func:`~torchsystem_trainer.depends.Depends`,
both re-exported as torchsystem 1.4.9's ``torchsystem.compiler`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, cast

from torch import compile as compile  # re-exported under the seed's name

from torchsystem_trainer.depends import Depends as Depends
from torchsystem_trainer.depends import Injector, Provider, inject

__all__ = ["Compiler", "Depends", "compile"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Compiler(Injector, Generic[T]):
    """A pipeline of steps that builds a ``T`` (usually an aggregate).

    The first step receives the arguments of :meth:`compile`; each later step receives the previous step's
    result: a ``tuple`` is unpacked into positional arguments, anything else is passed as the only argument.
    Every step's ``Depends`` parameters are resolved with this compiler's overrides.

    Attributes:
        steps: the injected steps, in the order they run: the live list (as upstream), so a step appended,
            removed or reordered there changes what :meth:`compile` runs. A function appended directly is run as
            it is, without dependency injection; :meth:`step` injects.

    Args:
        name: Optional name, used in error messages.
        provider: Overrides shared with other injectors; this compiler gets its own if None.
    """

    def __init__(self, name: str | None = None, *, provider: Provider | None = None) -> None:
        super().__init__(provider)
        self.name = name
        self.steps: list[Callable[..., Any]] = []

    def __repr__(self) -> str:
        orig = getattr(self, "__orig_class__", None)  # set by Compiler[Classifier]()
        arguments = getattr(orig, "__args__", ())
        label = type(self).__name__
        if arguments:
            label += "[" + ", ".join(getattr(argument, "__name__", repr(argument)) for argument in arguments) + "]"
        return f"{label}({self.name!r})" if self.name is not None else label

    def step(self, function: Callable[P, R]) -> Callable[P, R]:
        """Append ``function`` to the pipeline; use as a decorator.

        Args:
            function: The step. It receives the previous step's result (or :meth:`compile`'s arguments).

        Returns:
            The injected wrapper, which stays directly callable.

        Raises:
            TypeError: If ``function`` is not callable.
        """
        injected = inject(self.provider)(function)
        self.steps.append(injected)
        return injected

    def compile(self, *args: Any, **kwargs: Any) -> T:
        """Run the steps in order and return the last one's result.

        Every result is passed on as it is, ``None`` included (torchsystem 1.4.9 gives the step after one that
        returned ``None`` the arguments of ``compile`` again, so a step that forgot its ``return`` goes unnoticed;
        here the next step receives ``None`` and fails where the mistake is).

        Args:
            *args: Positional arguments of the first step.
            **kwargs: Keyword arguments of the first step.

        Returns:
            The last step's result.

        Raises:
            ValueError: If the pipeline has no steps (torchsystem 1.4.9 returns ``None``).
        """
        if not self.steps:
            raise ValueError(f"{self!r} has no steps: add a step with @compiler.step before calling compile()")
        first, *rest = self.steps
        result = first(*args, **kwargs)
        for step in rest:
            result = step(*result) if isinstance(result, tuple) else step(result)
        return cast(T, result)
