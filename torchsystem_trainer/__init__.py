"""torchsystem-trainer: domain-driven training for PyTorch, and a Lightning-style Trainer built on it."""

from torchsystem_trainer.callbacks.progress_bar import ProgressBar
from torchsystem_trainer.compiler import Compiler
from torchsystem_trainer.depends import Depends
from torchsystem_trainer.domain import Aggregate, Event, Events
from torchsystem_trainer.trainer import Trainer

# The composition root: the Trainer's default progress bar is a callback, a layer above the trainer's; it is wired
# here, where both are known, so the trainer layer imports no callback (see ARCHITECTURE.md's layers).
Trainer.default_progress_bar = ProgressBar
__all__ = ["Aggregate", "Compiler", "Depends", "Event", "Events", "Trainer", "__version__"]

__version__ = "0.1.0"
