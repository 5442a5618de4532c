"""Route an aggregate's trainable modules through ``DistributedDataParallel`` without changing the aggregate.

The usual way to use DDP replaces the model by its wrapper (``model = DDP(model)``): parameter names and
``state_dict`` keys gain a ``module.`` prefix, attributes of the model must be read through ``model.module``, and
``isinstance`` checks fail. An aggregate is the user's object, which the user's ``fit`` and every callback read,
so here nothing of it is replaced. Each trainable child (``aggregate.nn``) instead gets an instance attribute
``forward`` (a :class:`RoutedForward`) which, while the child is in training mode with gradients enabled, runs the
call through a ``DistributedDataParallel`` built around the child. DDP then does what it does for any wrapped
model: broadcast buffers before the forward, and all-reduce (average) the gradients during the backward pass.

So ``self.nn(x)``, or ``self(x)`` with a ``forward`` that calls ``self.nn``, is synchronised, and the aggregate's
``state_dict`` keys, ``named_parameters``, attributes, types and hooks stay exactly those of the unwrapped
aggregate: checkpoints of a DDP run load in one process and the other way round. Calls in evaluation mode or under
``torch.no_grad``/``inference_mode`` skip DDP, so they run no collective: evaluation shards may differ in length.

Containers without a ``forward`` of their own (``ModuleList``, ``ModuleDict``) are looked into, and their
trainable elements routed. A parameter outside every routed child (an ``nn.Parameter`` set on the aggregate
itself) is not seen by DDP; the strategy averages its gradient before each optimizer step instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Route", "RoutedForward", "loose_parameters", "route_modules", "trainable_modules", "unroute"]

_MISSING: Any = object()
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


class _Runner(nn.Module):
    """What ``DistributedDataParallel`` wraps: the user's module as a submodule, run through its original
    forward. The module's own hooks do not run again here: they ran in the user's call that led here."""

    def __init__(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = module
        self._forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)


class RoutedForward:
    """The ``forward`` a routed module gets: through DDP while training with gradients, else the original.

    Attributes:
        ddp: the ``DistributedDataParallel`` around the module.
        original: the module's forward before routing (a bound method, or an instance ``forward`` it had).
        calls: how many calls went through DDP since the count was last reset.
    """

    __slots__ = ("calls", "ddp", "module", "original")

    def __init__(self, ddp: DistributedDataParallel, original: Callable[..., Any], module: nn.Module) -> None:
        self.ddp = ddp
        self.original = original
        self.module = module
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.training and torch.is_grad_enabled():
            self.calls += 1
            return self.ddp(*args, **kwargs)
        return self.original(*args, **kwargs)


@dataclass(slots=True)
class Route:
    """One routed module.

    Attributes:
        name: its qualified name in the aggregate (``"nn"``, ``"heads.0"``).
        module: the module (still in the aggregate's tree, unchanged but for its ``forward`` attribute).
        forward: its :class:`RoutedForward`.
        previous: the instance ``forward`` it had before routing, if any (restored by :func:`unroute`).
    """

    name: str
    module: nn.Module
    forward: RoutedForward
    previous: Any = field(default=_MISSING)

    @property
    def ddp(self) -> DistributedDataParallel:
        """The ``DistributedDataParallel`` around the module."""
        return self.forward.ddp


def trainable_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of ``root`` that hold parameters with ``requires_grad``, looking into ``ModuleList`` and
    ``ModuleDict`` containers (which have no forward to route).

    Returns:
        ``(qualified name, module)`` pairs in registration order.
    """
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if not any(p.requires_grad for p in child.parameters()):
                continue
            if isinstance(child, _CONTAINERS):
                visit(f"{prefix}{name}.", child)
            else:
                found.append((f"{prefix}{name}", child))

    visit("", root)
    return found


def loose_parameters(root: nn.Module, modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``root`` with ``requires_grad`` that belong to none of ``modules``."""
    covered = {id(p) for module in modules for p in module.parameters()}
    return [p for p in root.parameters() if p.requires_grad and id(p) not in covered]


def route_modules(root: nn.Module, wrap: Callable[[nn.Module], DistributedDataParallel]) -> list[Route]:
    """Route every trainable child of ``root`` (see :func:`trainable_modules`) not routed yet through
    ``wrap(runner)``, a function that builds the ``DistributedDataParallel``.

    Args:
        root: the aggregate.
        wrap: builds DDP around a module (device ids, bucket sizes... are the caller's).

    Returns:
        The new routes (empty when everything is routed already: routing is idempotent).

    Raises:
        ValueError: when two routed children share a parameter (DDP would reduce its gradient twice), naming
            them.
    """
    candidates = [
        (n, m) for n, m in trainable_modules(root) if not isinstance(m.__dict__.get("forward"), RoutedForward)
    ]
    owners: dict[int, str] = {}
    for name, module in trainable_modules(root):
        for parameter in module.parameters():
            other = owners.setdefault(id(parameter), name)
            if other != name:
                raise ValueError(
                    f"{type(root).__name__}.{other} and .{name} share a parameter; DDPStrategy synchronises each "
                    "trainable child separately, so a shared (tied) parameter must live in one child: group the "
                    "modules that share it under one nn.Module"
                )
    routes = []
    for name, module in candidates:
        previous = module.__dict__.get("forward", _MISSING)
        original = module.forward
        ddp = wrap(_Runner(module, original))
        forward = RoutedForward(ddp, original, module)
        module.__dict__["forward"] = forward
        routes.append(Route(name, module, forward, previous))
    return routes


def unroute(routes: list[Route]) -> None:
    """Give each routed module its forward back and remove its DDP's autograd hooks, so that later backward
    passes (after the fit, or under another strategy) run no collective."""
    for route in routes:
        if route.previous is _MISSING:
            route.module.__dict__.pop("forward", None)
        else:
            route.module.__dict__["forward"] = route.previous
        reducer = getattr(route.ddp, "reducer", None)
        if reducer is not None:
            _remove_autograd_hooks(reducer)


def _remove_autograd_hooks(reducer: Any) -> None:
    """Remove the gradient hooks a DDP reducer put on its parameters. Without this, they stay until the reducer is
    garbage collected (its destructor removes them), and a backward pass after the fit would still all-reduce.
    torch has no public call for it: ``Reducer._remove_autograd_hooks`` (torch 2.x) is what DDP itself uses.
    Checked, so a torch without it fails loudly instead of leaving collectives behind."""
    remove = getattr(reducer, "_remove_autograd_hooks", None)
    if remove is None:
        raise RuntimeError(
            f"torch {torch.__version__}: DistributedDataParallel's reducer has no _remove_autograd_hooks, which "
            "giving the aggregate its own modules back after a fit relies on (torchsystem_trainer.strategies.routing); "
            "please report it"
        )
    remove()
