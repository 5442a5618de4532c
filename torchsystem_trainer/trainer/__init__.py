"""The training loop: a Producer of :mod:`torchsystem_trainer.events`."""

from torchsystem_trainer.trainer.loaders import BatchError
from torchsystem_trainer.trainer.progress import Progress
from torchsystem_trainer.trainer.seeding import seed_everything
from torchsystem_trainer.trainer.trainer import Trainer

__all__ = ["BatchError", "Progress", "Trainer", "seed_everything"]
