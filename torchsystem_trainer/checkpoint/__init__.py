"""Checkpoints: atomic files of plain data holding the whole training state, and exact resumption from them."""

from torchsystem_trainer.checkpoint.aggregate import (
    aggregate_epoch,
    aggregate_state,
    check_aggregate_state,
    check_plain,
    load_aggregate_state,
)
from torchsystem_trainer.checkpoint.io import CheckpointError, load_file, save_atomic, verify_archive
from torchsystem_trainer.checkpoint.resume import EpochStart, TrainPosition
from torchsystem_trainer.checkpoint.rng import generator_states, load_generator_states, load_rng_state, rng_state
from torchsystem_trainer.checkpoint.signals import STOP_SIGNALS, StopSignals
from torchsystem_trainer.checkpoint.state import (
    FORMAT,
    VERSION,
    callback_keys,
    checkpoint_state,
    read_checkpoint,
    resolve_checkpoint_path,
    restore,
)

__all__ = [
    "FORMAT",
    "STOP_SIGNALS",
    "VERSION",
    "CheckpointError",
    "EpochStart",
    "StopSignals",
    "TrainPosition",
    "aggregate_epoch",
    "aggregate_state",
    "callback_keys",
    "check_aggregate_state",
    "check_plain",
    "checkpoint_state",
    "generator_states",
    "load_aggregate_state",
    "load_file",
    "load_generator_states",
    "load_rng_state",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "restore",
    "rng_state",
    "save_atomic",
    "verify_archive",
]
