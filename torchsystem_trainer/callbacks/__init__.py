"""Callbacks shipped with the library: consumers of the Trainer's events, one per file."""

from torchsystem_trainer.callbacks.callback import HOOKS, Callback, CallbackHookError, hook_name
from torchsystem_trainer.callbacks.console import ConsoleLines
from torchsystem_trainer.callbacks.csv_logger import CSVLogger
from torchsystem_trainer.callbacks.early_stopping import EarlyStopping
from torchsystem_trainer.callbacks.ema import EMA
from torchsystem_trainer.callbacks.history import History
from torchsystem_trainer.callbacks.hyperparameters import HParam, hyperparameters
from torchsystem_trainer.callbacks.logger import Logger, LoggerWarning
from torchsystem_trainer.callbacks.lr_monitor import LearningRateMonitor
from torchsystem_trainer.callbacks.lr_scheduler import LearningRateScheduler, SchedulerConflictError
from torchsystem_trainer.callbacks.model_checkpoint import ModelCheckpoint
from torchsystem_trainer.callbacks.model_summary import ModelSummary
from torchsystem_trainer.callbacks.monitor import MonitorError
from torchsystem_trainer.callbacks.nan_detector import NaNDetector, NonFiniteError
from torchsystem_trainer.callbacks.progress_bar import ProgressBar
from torchsystem_trainer.callbacks.progress_base import ProgressBarBase
from torchsystem_trainer.callbacks.rich_progress import RichProgressBar
from torchsystem_trainer.callbacks.slurm_requeue import SLURMRequeue
from torchsystem_trainer.callbacks.swa import StochasticWeightAveraging
from torchsystem_trainer.callbacks.tensorboard import TensorBoardLogger
from torchsystem_trainer.callbacks.timer import Timer

__all__ = [
    "EMA",
    "HOOKS",
    "CSVLogger",
    "Callback",
    "CallbackHookError",
    "ConsoleLines",
    "EarlyStopping",
    "HParam",
    "History",
    "LearningRateMonitor",
    "LearningRateScheduler",
    "Logger",
    "LoggerWarning",
    "ModelCheckpoint",
    "ModelSummary",
    "MonitorError",
    "NaNDetector",
    "NonFiniteError",
    "ProgressBar",
    "ProgressBarBase",
    "RichProgressBar",
    "SLURMRequeue",
    "SchedulerConflictError",
    "StochasticWeightAveraging",
    "TensorBoardLogger",
    "Timer",
    "hook_name",
    "hyperparameters",
]
