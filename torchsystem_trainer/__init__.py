"""torchsystem-trainer: domain-driven training for PyTorch, and a Lightning-style Trainer built on it."""

from torchsystem_trainer.callbacks.console import ConsoleLines
from torchsystem_trainer.callbacks.model_summary import ModelSummary
from torchsystem_trainer.callbacks.progress_bar import ProgressBar
from torchsystem_trainer.compiler import Compiler
from torchsystem_trainer.depends import Depends
from torchsystem_trainer.domain import Aggregate, Event, Events
from torchsystem_trainer.trainer import Trainer

# The composition root: the Trainer's defaults (progress bar, model summary, console lines) are callbacks, a layer
# above the trainer's; they are wired here, where both are known, so the trainer layer imports no callback (see
# ARCHITECTURE.md's layers).
Trainer.default_progress_bar = ProgressBar
Trainer.default_model_summary = ModelSummary
Trainer.default_console = ConsoleLines
__all__ = ["Aggregate", "Compiler", "Depends", "Event", "Events", "Trainer", "__version__"]

__version__ = "0.1.0"
