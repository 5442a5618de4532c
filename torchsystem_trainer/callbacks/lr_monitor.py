"""``LearningRateMonitor``: record every optimizer's learning rates (and momentum), as Lightning's callback does.

The optimizers are those the aggregate holds as attributes
(:func:`~torchsystem_trainer.strategies.optimizer_step.find_optimizers`). Keys follow Lightning's
``LearningRateMonitor``:

- ``"lr-<OptimizerClass>"``; the second optimizer of the same class is ``"lr-<OptimizerClass>-1"``, the third
  ``-2``, and so on;
- with more than one param group, ``"/pg<i>"`` (1-based) is appended per group, or ``"/<name>"`` for a group
  that has a ``"name"`` key (also when it is the only group);
- momentum keys add ``"-momentum"``: ``"lr-SGD-momentum"``. The momentum is ``betas[0]`` for Adam-like
  optimizers, ``momentum`` for SGD-like ones, and 0.0 (with a warning at fit start) for optimizers with neither.

When values are read:

- ``logging_interval="epoch"``: at every ``EpochStarted``, every optimizer's groups, so ``lrs[key][e]`` is the
  rate epoch ``e`` trains with (counting from the first epoch this callback saw);
- ``logging_interval="step"``: at every ``GradientsComputed``, the stepping optimizer's groups, so each value is
  the rate of that optimizer step (read before ``optimizer.step()``; with gradient accumulation, one value per
  optimizer step, not per batch).

Reading ``group["lr"]`` is a host float: no synchronisation. Each value is also written, under its key, to every
:class:`~torchsystem_trainer.callbacks.logger.Logger` in ``trainer.callbacks`` (``TensorBoardLogger``,
``CSVLogger``...) through its ``record``, at the same x-axis as the loggers' own values: ``trainer.progress.step``
at an epoch's start, ``GradientsComputed.step`` for a step.

``lrs`` and ``momentums`` accumulate across fits and are saved in checkpoints, so a resumed fit continues them.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.callbacks.logger import Logger
from torchsystem_trainer.strategies.optimizer_step import find_optimizers

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch.optim import Optimizer

    from torchsystem_trainer.events import EpochStarted, FitStarted, GradientsComputed

__all__ = ["LearningRateMonitor", "optimizer_keys"]

INTERVALS = ("epoch", "step")


class LearningRateMonitor(Callback):
    """Record the learning rate of every param group of every optimizer (see the module docstring).

    Args:
        logging_interval: ``"epoch"`` (at each epoch's start) or ``"step"`` (at each optimizer step).
        log_momentum: also record each group's momentum in :attr:`momentums`.

    Attributes:
        lrs: ``{key: [learning rate, ...]}``, e.g. ``{"lr-SGD": [0.1, 0.05]}``.
        momentums: ``{key + "-momentum": [momentum, ...]}``; empty unless ``log_momentum``.

    Raises:
        ValueError: for a ``logging_interval`` other than ``"epoch"`` or ``"step"``.
    """

    def __init__(self, logging_interval: Literal["epoch", "step"] = "epoch", log_momentum: bool = False) -> None:
        super().__init__()
        if logging_interval not in INTERVALS:
            raise ValueError(
                f"LearningRateMonitor: logging_interval={logging_interval!r} is invalid; valid: 'epoch', 'step'"
            )
        self.logging_interval = logging_interval
        self.log_momentum = bool(log_momentum)
        self.lrs: dict[str, list[float]] = {}
        self.momentums: dict[str, list[float]] = {}
        self._keys: list[tuple[Optimizer, list[str]]] = []

    @override
    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The hooks, less the one the other ``logging_interval`` uses (so its events are never built).

        Raises:
            CallbackHookError: as :meth:`Callback.subscriptions`.
        """
        table = super().subscriptions()
        table.pop("GradientsComputed" if self.logging_interval == "epoch" else "EpochStarted", None)
        return table

    def on_fit_started(self, event: FitStarted) -> None:
        """Name the aggregate's optimizers' param groups.

        Raises:
            ValueError: when the aggregate holds no optimizer.
        """
        optimizers = find_optimizers(event.aggregate)
        if not optimizers:
            raise ValueError(
                f"LearningRateMonitor: {type(event.aggregate).__name__} holds no optimizer as an attribute; "
                "remove the callback or give the aggregate an optimizer"
            )
        self._keys = optimizer_keys(optimizers)
        for optimizer, keys in self._keys:
            for key in keys:
                self.lrs.setdefault(key, [])
                if self.log_momentum:
                    self.momentums.setdefault(f"{key}-momentum", [])
            if self.log_momentum and not any("betas" in g or "momentum" in g for g in optimizer.param_groups):
                warnings.warn(
                    f"LearningRateMonitor: {type(optimizer).__name__} has no momentum or betas; its momentum is "
                    "recorded as 0.0",
                    stacklevel=2,
                )

    def on_epoch_started(self, event: EpochStarted) -> None:
        """``logging_interval="epoch"``: record every optimizer's rates."""
        for optimizer, keys in self._keys:
            self._record(event.trainer, optimizer, keys, event.trainer.progress.step)

    def on_gradients_computed(self, event: GradientsComputed) -> None:
        """``logging_interval="step"``: record the stepping optimizer's rates."""
        for optimizer, keys in self._keys:
            if optimizer is event.optimizer:
                self._record(event.trainer, optimizer, keys, event.step)
                return

    @override
    def state_dict(self) -> dict[str, Any]:
        """``{"lrs": ..., "momentums": ...}``, lists of floats."""
        return {
            "lrs": {key: list(values) for key, values in self.lrs.items()},
            "momentums": {key: list(values) for key, values in self.momentums.items()},
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            KeyError: when ``"lrs"`` or ``"momentums"`` is missing.
        """
        self.lrs = {k: [float(x) for x in v] for k, v in state["lrs"].items()}
        self.momentums = {k: [float(x) for x in v] for k, v in state["momentums"].items()}

    def _record(self, trainer: Any, optimizer: Optimizer, keys: list[str], step: int) -> None:
        loggers = [callback for callback in trainer.callbacks if isinstance(callback, Logger)]
        # groups added after the fit started (add_param_group) have no key yet and are not recorded
        for group, key in zip(optimizer.param_groups, keys, strict=False):
            values = {key: float(group["lr"])}
            self.lrs[key].append(values[key])
            if self.log_momentum:
                momentum = group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
                values[f"{key}-momentum"] = float(momentum)
                self.momentums[f"{key}-momentum"].append(values[f"{key}-momentum"])
            for logger in loggers:
                logger.record(values, step)


def optimizer_keys(optimizers: list[Optimizer]) -> list[tuple[Optimizer, list[str]]]:
    """Lightning's names for each optimizer's param groups (see the module docstring).

    Args:
        optimizers: the optimizers, in the aggregate's attribute order.

    Returns:
        ``[(optimizer, [key per param group]), ...]``.

    Raises:
        ValueError: when two param groups of one optimizer have the same ``"name"``.
    """
    seen: Counter[type] = Counter()
    named: list[tuple[Optimizer, list[str]]] = []
    for optimizer in optimizers:
        kind = type(optimizer)
        seen[kind] += 1
        base = f"lr-{kind.__name__}" + (f"-{seen[kind] - 1}" if seen[kind] > 1 else "")
        groups = optimizer.param_groups
        names = [g["name"] for g in groups if "name" in g]
        if len(names) != len(set(names)):
            raise ValueError(
                f"LearningRateMonitor: {kind.__name__} has param groups with the same name ({names}); give each "
                "group a unique 'name'"
            )
        keys = []
        for index, group in enumerate(groups):
            if "name" in group:
                keys.append(f"{base}/{group['name']}")
            else:
                keys.append(f"{base}/pg{index + 1}" if len(groups) > 1 else base)
        named.append((optimizer, keys))
    return named
