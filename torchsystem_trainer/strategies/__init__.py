"""Strategies: devices, precision, data parallelism and collectives."""

from torchsystem_trainer.strategies.ddp import DDPStrategy
from torchsystem_trainer.strategies.environment import ProcessEnvironment
from torchsystem_trainer.strategies.fsdp import FSDPStrategy, WrapPolicy
from torchsystem_trainer.strategies.launchers import ProcessRaisedError
from torchsystem_trainer.strategies.optimizer_step import OptimizerStep
from torchsystem_trainer.strategies.parallel import ParallelStrategy
from torchsystem_trainer.strategies.precision import PRECISIONS, Precision, PrecisionType
from torchsystem_trainer.strategies.resolve import STRATEGY_NAMES, resolve_strategy
from torchsystem_trainer.strategies.samplers import DistributedEvalSampler
from torchsystem_trainer.strategies.single_device import SingleDeviceStrategy, resolve_device
from torchsystem_trainer.strategies.strategy import CLIP_ALGORITHMS, ClipAlgorithm, ReduceOp, Strategy

__all__ = [
    "CLIP_ALGORITHMS",
    "PRECISIONS",
    "STRATEGY_NAMES",
    "ClipAlgorithm",
    "DDPStrategy",
    "DistributedEvalSampler",
    "FSDPStrategy",
    "OptimizerStep",
    "ParallelStrategy",
    "Precision",
    "PrecisionType",
    "ProcessEnvironment",
    "ProcessRaisedError",
    "ReduceOp",
    "SingleDeviceStrategy",
    "Strategy",
    "WrapPolicy",
    "resolve_device",
    "resolve_strategy",
]
