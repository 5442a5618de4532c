"""Checkpoint files: written atomically, checked for corruption, read with ``torch.load(weights_only=True)``.

A write goes to a temporary file in the destination's folder (``.<name>.<random>.tmp``), is flushed and
``fsync``-ed, then ``os.replace``-d over the destination, and the folder is ``fsync``-ed: a crash at any moment
(``SIGKILL``, power loss after the ``fsync``) leaves either the old complete file or the new complete file, never a
torn one. This is the answer to Lightning's partially written ``last.ckpt`` after a preemption (its issue #18780).

A read never changes anything on disk and runs no code from the file. It checks, in order:

1. the file is a zip archive as ``torch.save`` writes them (else it is truncated, corrupt or another format, and
   nothing in it is unpickled, so a raw pickle payload never reaches an unpickler);
2. every record's CRC-32 matches its bytes (``torch.load`` alone loads flipped bytes in tensor data silently);
3. ``torch.load(weights_only=True)``: only tensors, numbers, strings and plain containers come back; a pickled
   object of any other class (``os.system``, ``builtins.open``...) is refused before it is built.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "fsync_folder", "load_file", "save_atomic", "verify_archive"]

_CHUNK = 1 << 20  # bytes read at a time when checking CRCs
_CRC_SWITCH = threading.Lock()  # held during torch.save: the process-wide CRC option is read as a save starts


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: truncated, corrupt, unsafe, foreign or incompatible. The message names
    the file."""


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Every record of the archive gets its CRC-32, which :func:`load_file` checks. That is torch's default; when a
    user has switched it off (``torch.serialization.set_crc32_options(False)``, a process-wide setting that
    ``torch.save`` reads as it starts), it is switched on for the duration of the write. Writes from several threads
    (a background checkpoint and one in the training thread) take turns in ``torch.save``, so none restores the
    setting while another is starting.

    Args:
        obj: tensors, numbers, strings, ``None`` and lists/tuples/dicts of those (what ``weights_only`` loads).
        path: the destination; its folder is created when missing.

    Returns:
        The destination path.

    Raises:
        OSError: when the folder cannot be written; the destination is then unchanged and no temporary file is
            left behind (except after a ``SIGKILL``: a hidden ``.*.tmp`` file, which readers ignore).
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            with _crc32_on():
                torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(destination.parent)
    return destination


@contextlib.contextmanager
def _crc32_on() -> Iterator[None]:
    """``torch.save`` inside computes every record's CRC-32. The option is switched on only when it is off (torch's
    default is on), and always under :data:`_CRC_SWITCH`: a save that found it on while another thread had switched
    it on for a moment would otherwise start after that thread switched it back off."""
    with _CRC_SWITCH:
        previous = torch.serialization.get_crc32_options()
        if previous:
            yield
            return
        torch.serialization.set_crc32_options(True)
        try:
            yield
        finally:
            torch.serialization.set_crc32_options(previous)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; a platform that cannot open folders skips it."""
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


def verify_archive(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a complete zip archive whose records all match their CRC-32, without unpickling.

    Args:
        path: the file.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        CheckpointError: when it is not a zip archive (empty, truncated, another format such as a raw pickle) or a
            record's bytes do not match its CRC-32 (corrupt), naming the file and the record.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist")
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue  # written with torch.serialization.set_crc32_options(False): nothing to compare
                with archive.open(info) as record:  # reading to the end compares the CRC-32 (BadZipFile)
                    while record.read(_CHUNK):
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as error:
        if not zipfile.is_zipfile(source):
            raise CheckpointError(
                f"checkpoint {str(source)!r} is not a zip archive written by torch.save: it is empty, truncated, "
                f"corrupt or in another format (nothing in it was unpickled)"
            ) from error
        raise CheckpointError(f"checkpoint {str(source)!r} is truncated or corrupt: {error}") from error


def load_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Read a checkpoint file safely: :func:`verify_archive`, then ``torch.load(weights_only=True)``, so only
    tensors, numbers, strings and plain containers come back and no code in the file runs.

    Args:
        path: the file.
        map_location: where tensors are put (default the CPU).

    Returns:
        The object saved.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file is truncated or corrupt, or holds objects other than tensors and plain
            data (a pickle payload, refused before it runs), naming the file.
    """
    source = Path(path)
    verify_archive(source)
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {str(source)!r} was refused: it holds pickled objects other than tensors, numbers, strings "
            f"and plain containers ({_refusal(error)}). Nothing in it was run. Do not load it with "
            f"weights_only=False unless you trust whoever wrote it"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as error:
        raise CheckpointError(f"checkpoint {str(source)!r} is truncated or corrupt: {error}") from error


def _refusal(error: BaseException) -> str:
    """What torch's ``weights_only`` unpickler refused, in a few words. Its advice (retry with
    ``weights_only=False``, or allow-list the global) is left out on purpose: it is how such files attack."""
    text = str(error)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return f"it would build {found.group(1)}"
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    return type(error).__name__
