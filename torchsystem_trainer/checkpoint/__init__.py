"""Checkpoints: atomic files of plain data holding the whole training state, and exact resumption from them."""

from torchsystem_trainer.checkpoint.aggregate import (
    aggregate_epoch,
    aggregate_state,
    check_aggregate_state,
    check_plain,
    describe_mismatch,
    load_aggregate_state,
    network_identities,
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
    library_version,
    read_checkpoint,
    resolve_checkpoint_path,
    restore,
)
from torchsystem_trainer.checkpoint.weights import (
    AVERAGED_KEY,
    UnknownModelError,
    load_model,
    load_weights,
    weights_state,
)

__all__ = [
    "AVERAGED_KEY",
    "FORMAT",
    "STOP_SIGNALS",
    "VERSION",
    "CheckpointError",
    "EpochStart",
    "StopSignals",
    "TrainPosition",
    "UnknownModelError",
    "aggregate_epoch",
    "aggregate_state",
    "callback_keys",
    "check_aggregate_state",
    "check_plain",
    "checkpoint_state",
    "describe_mismatch",
    "generator_states",
    "library_version",
    "load_aggregate_state",
    "load_file",
    "load_generator_states",
    "load_model",
    "load_rng_state",
    "load_weights",
    "network_identities",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "restore",
    "rng_state",
    "save_atomic",
    "verify_archive",
    "weights_state",
]
