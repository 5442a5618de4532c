"""Checkpoints: atomic files of plain data holding the whole training state."""

from torchsystem_trainer.checkpoint.io import CheckpointError, load_file, save_atomic
from torchsystem_trainer.checkpoint.state import (
    FORMAT,
    VERSION,
    aggregate_state,
    checkpoint_state,
    load_aggregate_state,
    resolve_checkpoint_path,
    restore,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "aggregate_state",
    "checkpoint_state",
    "load_aggregate_state",
    "load_file",
    "resolve_checkpoint_path",
    "restore",
    "save_atomic",
]
