"""Checks of the Trainer's arguments: each error names the argument, the bad value and what is valid."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from torch.nn import Module

__all__ = [
    "LIGHTNING_ONLY",
    "aggregate",
    "choice",
    "fast_dev_run",
    "limit",
    "max_epochs",
    "non_negative_float",
    "non_negative_int",
    "num_sanity_val_steps",
    "optional_positive_int",
    "positive_int",
    "seconds",
    "subscriptions",
    "unknown_keywords",
    "val_check_interval",
]


LIGHTNING_ONLY: dict[str, str] = {
    "accelerator": "strategy='cpu', 'cuda' or 'mps' (or DDPStrategy(accelerator=...))",
    "devices": "strategy=DDPStrategy(devices=...) for one process per device, or "
    "strategy=SingleDeviceStrategy('cuda:1') for one device",
    "num_nodes": "start every node with torchrun --nnodes=N and give strategy='ddp' (docs/distributed.md)",
    "logger": "callbacks=[TensorBoardLogger(...), CSVLogger(...)]: loggers are callbacks here",
    "log_every_n_steps": "the logger's own setting, e.g. TensorBoardLogger(log_every_n_steps=...) in callbacks",
    "enable_checkpointing": "nothing: checkpoints are written only by a ModelCheckpoint in callbacks=[...]",
    "benchmark": "set torch.backends.cudnn.benchmark = True before fit",
    "detect_anomaly": "call fit inside `with torch.autograd.detect_anomaly():`",
    "sync_batchnorm": "torch.nn.SyncBatchNorm.convert_sync_batchnorm(network) before fit",
    "use_distributed_sampler": "nothing: DDPStrategy shards the loaders itself (a loader that already has a "
    "DistributedSampler keeps it)",
    "reload_dataloaders_every_n_epochs": "nothing: every epoch iterates the loaders anew",
    "inference_mode": "nothing: evaluation always runs under torch.inference_mode()",
    "plugins": "strategy=... and precision=...",
    "overfit_batches": "limit_train_batches=n, giving the training loader as the validation loader too",
    "barebones": "Trainer(enable_progress_bar=False, enable_model_summary=False, verbose=False) with no callbacks: "
    "the Trainer adds nothing else",
}
"""Lightning ``Trainer`` keywords this Trainer does not take, each with what to write instead."""


def unknown_keywords(given: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Refuse keyword arguments the Trainer does not take, naming our equivalent of a Lightning keyword or the
    closest valid name.

    Args:
        given: the unexpected keyword arguments.
        valid: the Trainer's keyword arguments.

    Raises:
        TypeError: for the first unexpected keyword, if any.
    """
    if not given:
        return
    name = next(iter(given))
    if name in LIGHTNING_ONLY:
        raise TypeError(
            f"Trainer() got {name}={given[name]!r}, a Lightning Trainer argument this Trainer does not take; here: "
            f"{LIGHTNING_ONLY[name]}"
        )
    close = difflib.get_close_matches(name, valid, n=1)
    raise TypeError(
        f"Trainer() got an unexpected keyword argument {name!r}"
        + (f"; did you mean {close[0]!r}?" if close else "")
        + f" Valid arguments: {', '.join(valid)}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def non_negative_int(name: str, value: Any) -> int | None:
    """``None`` or an int >= 0.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}={value!r} is invalid; valid: None or an int >= 0")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An int >= 1.

    Raises:
        ValueError: otherwise.
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; valid: an int >= 1")
    return int(value)


def max_epochs(value: Any) -> int | None:
    """``None``, ``-1`` (no epoch limit, Lightning's) or an int >= 0.

    Raises:
        ValueError: otherwise.
    """
    if value is None or (_is_int(value) and value >= -1):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"max_epochs={value!r} is invalid; valid: None, -1 (no epoch limit) or an int >= 0")


def optional_positive_int(name: str, value: Any) -> int | None:
    """``None`` or an int >= 1.

    Raises:
        ValueError: otherwise.
    """
    if value is None or (_is_int(value) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"{name}={value!r} is invalid; valid: None or an int >= 1")


def num_sanity_val_steps(value: Any) -> int:
    """``-1`` (the whole validation loader) or an int >= 0 (0: no sanity check).

    Raises:
        ValueError: otherwise.
    """
    if _is_int(value) and value >= -1:
        return int(value)
    raise ValueError(
        f"num_sanity_val_steps={value!r} is invalid; valid: an int >= 0 (0 turns the check off) or -1 (the whole "
        f"validation loader)"
    )


def val_check_interval(value: Any, check_val_every_n_epoch: int | None) -> int | float:
    """``None`` (1.0), a float in ``(0, 1]`` (that fraction of the epoch) or an int >= 1 (training batches); with
    ``check_val_every_n_epoch=None`` an int (Lightning's rule: batches are then counted across epochs).

    Returns:
        The interval (``1.0`` for ``None``).

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        value = 1.0
    valid = (_is_int(value) and value >= 1) or (isinstance(value, float) and 0.0 < value <= 1.0)
    if not valid:
        raise ValueError(
            f"val_check_interval={value!r} is invalid; valid: None, a float in (0.0, 1.0] (that fraction of the "
            f"training epoch) or an int >= 1 (every that many training batches)"
        )
    if check_val_every_n_epoch is None and isinstance(value, float):
        raise ValueError(
            f"val_check_interval={value!r} with check_val_every_n_epoch=None is invalid; valid: an int number of "
            f"training batches, counted across epochs (or give check_val_every_n_epoch an int)"
        )
    return value  # type: ignore[no-any-return]


def non_negative_float(name: str, value: Any) -> float | None:
    """``None`` or a real number >= 0.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}={value!r} is invalid; valid: None or a number >= 0")
    return float(value)


def choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """One of ``valid``.

    Raises:
        ValueError: otherwise, listing ``valid``.
    """
    if value not in valid:
        raise ValueError(f"{name}={value!r} is invalid; valid: {', '.join(repr(v) for v in valid)}")
    return str(value)


def limit(name: str, value: Any) -> int | float | None:
    """``None``, an int >= 0 (batches) or a float in ``[0, 1]`` (a fraction of the loader).

    Raises:
        ValueError: otherwise.
    """
    if value is None or (_is_int(value) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"{name}={value!r} is invalid; valid: None, an int >= 0, or a float in [0.0, 1.0]")


def fast_dev_run(value: Any) -> int:
    """``False``/``True`` or an int >= 0; returns the number of batches (0 when off).

    Raises:
        ValueError: otherwise.
    """
    if isinstance(value, bool):
        return int(value)
    if _is_int(value) and value >= 0:
        return int(value)
    raise ValueError(f"fast_dev_run={value!r} is invalid; valid: a bool or an int >= 0")


_CLOCK = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def seconds(name: str, value: Any) -> float | None:
    """A duration: ``None``, seconds (> 0), a ``timedelta``, or ``"DD:HH:MM:SS"`` (Lightning's form).

    Returns:
        Seconds, or ``None``.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, str) and (match := _CLOCK.match(value)):
        days, hours, minutes, secs = (int(group) for group in match.groups())
        total = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        total = float(value)
    else:
        total = -1.0
    if not total > 0:
        raise ValueError(
            f"{name}={value!r} is invalid; valid: None, seconds > 0, a timedelta, or 'DD:HH:MM:SS'"
        )
    return total


def aggregate(value: Any, methods: Sequence[str], method: str) -> None:
    """Check that ``value`` is a module with the ``methods`` a Trainer method calls.

    Raises:
        TypeError: naming what is missing.
    """
    expected = (
        "an Aggregate (torchsystem_trainer.Aggregate: given forward, a criterion and an optimizer it has a default "
        "fit and evaluate), or any torch.nn.Module with "
        + " and ".join(f"{name}(...)" for name in methods)
        + " methods returning (predictions, loss)"
        if methods
        else "a torch.nn.Module (an Aggregate, or any module)"
    )
    if not isinstance(value, Module):
        raise TypeError(f"Trainer.{method}: the aggregate is a {type(value).__name__}; expected {expected}")
    for name in methods:
        if not callable(getattr(value, name, None)):
            raise TypeError(f"Trainer.{method}: {type(value).__name__} has no {name}() method; expected {expected}")


def subscriptions(callbacks: Sequence[Any]) -> list[dict[str, list[Callable[[Any], None]]]]:
    """Ask every callback for its routing table, all before any is used: registering is all-or-nothing.

    Returns:
        One ``{event name: handlers}`` table per callback, in order.

    Raises:
        TypeError: for a callback that is not a consumer (no ``subscriptions()``), or a callback class given
            instead of an instance.
        ValueError: from a ``Callback`` with a hook that matches no event.
    """
    tables = []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, type):
            raise TypeError(
                f"callbacks[{index}] is the class {callback.__name__}, not an instance: write {callback.__name__}(...)"
            )
        method = getattr(callback, "subscriptions", None)
        if not callable(method):
            raise TypeError(
                f"callbacks[{index}] is a {type(callback).__name__}: a callback must be a Callback subclass or a "
                "Consumer"
            )
        tables.append(method())
    return tables

