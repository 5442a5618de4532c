"""Strategy shorthands: ``Trainer(strategy="auto" | "cpu" | "cuda" | "mps" | "ddp" | "fsdp")``."""

from __future__ import annotations

from torchsystem_trainer.strategies.single_device import SingleDeviceStrategy
from torchsystem_trainer.strategies.strategy import Strategy

__all__ = ["STRATEGY_NAMES", "resolve_strategy"]

STRATEGY_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps", "ddp", "fsdp")


def resolve_strategy(strategy: str | Strategy, precision: str | None = None) -> Strategy:
    """Turn a strategy name into a strategy; a :class:`Strategy` instance passes through.

    Args:
        strategy: a :class:`Strategy`, or ``"auto"`` (one device: CUDA if present, else MPS, else CPU),
            ``"cpu"``, ``"cuda"``, ``"mps"``, ``"ddp"`` (``DDPStrategy()`` with its defaults), ``"fsdp"``
            (``FSDPStrategy()`` with its defaults).
        precision: the precision for a strategy built from a name (default ``"32-true"``); it must be ``None``
            when ``strategy`` is an instance, which carries its own.

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name (listing the valid ones), or a precision given with an instance.
        RuntimeError: when the named device is not available.
    """
    if isinstance(strategy, Strategy):
        if precision is not None:
            raise ValueError(
                f"precision={precision!r} given with strategy={strategy!r}: pass the precision to the strategy"
            )
        return strategy
    if strategy == "ddp":
        from torchsystem_trainer.strategies.ddp import DDPStrategy

        return DDPStrategy(precision=precision or "32-true")
    if strategy == "fsdp":
        from torchsystem_trainer.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(precision=precision or "32-true")
    if strategy not in STRATEGY_NAMES:
        raise ValueError(
            f"strategy={strategy!r} is not a strategy; valid: a Strategy instance or one of {', '.join(STRATEGY_NAMES)}"
        )
    return SingleDeviceStrategy(strategy, precision=precision or "32-true")
