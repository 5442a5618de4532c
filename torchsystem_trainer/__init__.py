"""torchsystem-trainer: domain-driven training for PyTorch, and a Lightning-style Trainer built on it."""

from torchsystem_trainer.compiler import Compiler
from torchsystem_trainer.depends import Depends
from torchsystem_trainer.domain import Aggregate, Event, Events
from torchsystem_trainer.trainer import Trainer

__all__ = ["Aggregate", "Compiler", "Depends", "Event", "Events", "Trainer", "__version__"]

__version__ = "0.1.0"
