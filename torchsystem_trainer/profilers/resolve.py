"""The Trainer's ``profiler`` argument, checked and turned into a profiler (or ``None``)."""

from __future__ import annotations

from typing import Any

from torchsystem_trainer.profilers.pytorch import PyTorchProfiler
from torchsystem_trainer.profilers.simple import SimpleProfiler

__all__ = ["PROFILERS", "resolve_profiler"]

PROFILERS: dict[str, type[SimpleProfiler]] = {"simple": SimpleProfiler, "pytorch": PyTorchProfiler}
"""The profilers by the names ``Trainer(profiler=...)`` takes (Lightning's names)."""


def resolve_profiler(profiler: Any) -> SimpleProfiler | None:
    """``None``, a name of :data:`PROFILERS` (a new profiler with its defaults), or a profiler given as is.

    Raises:
        ValueError: for another name, listing the valid ones.
        TypeError: for anything else.
    """
    if profiler is None or isinstance(profiler, SimpleProfiler):
        return profiler
    if isinstance(profiler, str):
        factory = PROFILERS.get(profiler)
        if factory is None:
            raise ValueError(
                f"Trainer: profiler={profiler!r} is invalid; valid: None, {', '.join(map(repr, PROFILERS))}, or a "
                "SimpleProfiler/PyTorchProfiler instance"
            )
        return factory()
    raise TypeError(
        f"Trainer: profiler={profiler!r} is a {type(profiler).__name__}; valid: None, "
        f"{', '.join(map(repr, PROFILERS))}, or a SimpleProfiler/PyTorchProfiler instance"
    )
