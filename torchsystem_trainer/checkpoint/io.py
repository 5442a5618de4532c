"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A write goes to a temporary file in the destination's folder, is flushed and ``fsync``-ed, then
``os.replace``-d over the destination, and the folder is ``fsync``-ed: a crash at any moment leaves either the
old complete file or the new complete file, never a torn one. A read never changes anything on disk.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_file", "save_atomic"]


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: truncated, corrupt, unsafe, foreign or incompatible."""


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Args:
        obj: tensors, numbers, strings, ``None`` and lists/tuples/dicts of those.
        path: the destination; its folder is created when missing.

    Returns:
        The destination path.

    Raises:
        OSError: when the folder cannot be written; the destination is then unchanged.
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(destination.parent)
    return destination


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Read a checkpoint file with ``torch.load(weights_only=True)``: only tensors, numbers, strings and plain
    containers come back, and no code in the file runs.

    Args:
        path: the file.
        map_location: where tensors are put (default the CPU).

    Returns:
        The object saved.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file is truncated or corrupt, or holds objects other than tensors and plain
            data (a pickle payload), naming the file.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist")
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {str(source)!r} was refused: it holds objects other than tensors, numbers, strings and "
            f"plain containers, which weights_only loading does not run ({error})"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint {str(source)!r} is truncated or corrupt: {error}") from error
