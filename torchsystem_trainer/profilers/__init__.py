"""Profilers: where a fit's time goes (``Trainer(profiler="simple" | "pytorch" | a profiler)``)."""

from torchsystem_trainer.profilers.pytorch import PyTorchProfiler
from torchsystem_trainer.profilers.resolve import PROFILERS, resolve_profiler
from torchsystem_trainer.profilers.simple import Record, SimpleProfiler

__all__ = ["PROFILERS", "PyTorchProfiler", "Record", "SimpleProfiler", "resolve_profiler"]
