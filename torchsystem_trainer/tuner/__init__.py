"""Tools that drive the Trainer: the learning-rate finder (Lightning's ``Tuner.lr_find``)."""

from torchsystem_trainer.tuner.lr_finder import LRFinder
from torchsystem_trainer.tuner.snapshot import TrainingSnapshot
from torchsystem_trainer.tuner.tuning import Tuner

__all__ = ["LRFinder", "TrainingSnapshot", "Tuner"]
