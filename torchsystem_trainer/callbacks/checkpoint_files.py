"""Files for ``ModelCheckpoint``: the name template, free names, top-k bookkeeping, ``last.ckpt``, and finding the
newest checkpoint.

A template is text with ``{field}`` or ``{field:spec}`` parts, as ``str.format`` writes them: ``epoch`` (0-based,
the epoch that was running), ``step`` (optimizer steps so far, the trainer's ``global_step``) and any key of the
epoch's results, slashes included (``"{epoch}-{validation/loss:.3f}"``). The rendered name has every ``/`` (and
the platform's path separators) replaced by ``_``, so a metric name never makes a sub-folder.
"""

from __future__ import annotations

import math
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from torchsystem_trainer.callbacks.monitor import monitored_value
from torchsystem_trainer.checkpoint import CheckpointError, load_file, save_atomic
from torchsystem_trainer.checkpoint.sharded import METADATA, is_complete, read_sharded

__all__ = [
    "EXTENSION",
    "admit",
    "best_of",
    "check_template",
    "free_path",
    "link_or_write",
    "newest_checkpoint",
    "render",
    "warn_untracked",
]

EXTENSION = ".ckpt"
_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")
_SEPARATORS = {"/", os.sep, os.altsep or "/"}


def check_template(owner: str, template: str, reserved: tuple[str, ...]) -> str:
    """Check a file name template once, in ``__init__``, so a bad one fails before any training.

    Args:
        owner: the callback's name, for messages.
        template: the template, with or without the ``.ckpt`` extension.
        reserved: names the template may not be (``"last"``...).

    Returns:
        The template without the extension.

    Raises:
        ValueError: for an empty or hidden name, unbalanced braces, a format spec that cannot format a number,
            or a reserved name.
    """
    name = template[: -len(EXTENSION)] if template.endswith(EXTENSION) else template
    problem = None
    if not name or name.startswith("."):
        problem = "it is empty or starts with '.' (names starting with '.' are temporary files)"
    elif name in reserved:
        problem = f"{reserved} are the names of the special files"
    elif "{" in _FIELD.sub("", name) or "}" in _FIELD.sub("", name):
        problem = "its braces do not form '{field}' or '{field:spec}' parts"
    for match in _FIELD.finditer(name):
        field, spec = match.group(1), match.group(2) or ""
        try:
            format(0 if field in ("epoch", "step") else 0.0, spec)
        except ValueError:
            problem = f"the format spec {spec!r} of {{{field}}} cannot format a number"
    if problem is not None:
        raise ValueError(
            f"{owner}: filename={template!r} is invalid: {problem}; valid: a template such as "
            f"'epoch={{epoch}}-step={{step}}' or '{{epoch}}-{{validation/loss:.3f}}'"
        )
    return name


def render(owner: str, template: str, epoch: int, step: int, results: Mapping[str, float]) -> str | None:
    """Fill a checked template.

    Args:
        owner: the callback's name, for messages.
        template: what :func:`check_template` returned.
        epoch: the 0-based epoch.
        step: optimizer steps so far.
        results: the flat ``"<phase>/<name>"`` results to take other fields from.

    Returns:
        The file name without extension, or ``None`` when a field's phase did not run (see
        :func:`~torchsystem_trainer.callbacks.monitor.monitored_value`).

    Raises:
        MonitorError: for a field that is not in the results of a phase that ran, or names no phase.
    """
    parts, position = [], 0
    for match in _FIELD.finditer(template):
        field, spec = match.group(1), match.group(2) or ""
        if field in ("epoch", "step"):
            value: Any = epoch if field == "epoch" else step
        else:
            value = monitored_value(f"{owner} filename", field, results)
            if value is None:
                return None
        parts += [template[position : match.start()], format(value, spec)]
        position = match.end()
    name = "".join(parts) + template[position:]
    for separator in _SEPARATORS:
        name = name.replace(separator, "_")
    return name


def free_path(folder: Path, name: str, taken: set[str], reserved: tuple[str, ...]) -> Path:
    """A path for ``name`` in ``folder`` that no file and no tracked path uses: ``name.ckpt``, else
    ``name-v1.ckpt``, ``name-v2.ckpt``... (Lightning's versioning), so no file is ever overwritten by another.

    Args:
        folder: the checkpoint folder.
        name: the rendered name, without extension.
        taken: paths (as strings) already tracked.
        reserved: names of the special files, never given out.

    Returns:
        The path.
    """
    candidate, version = name, 0
    while True:
        path = folder / f"{candidate}{EXTENSION}"
        if candidate not in reserved and str(path) not in taken and not path.exists():
            return path
        version += 1
        candidate = f"{name}-v{version}"


def rank(score: float | None, mode: str | None) -> float:
    """A score made comparable as "lower is better" for ``mode``; ``nan`` (and no score) ranks worst."""
    if score is None or score != score:
        return math.inf
    return score if mode == "min" else -score


def _worst(kept: dict[str, float | None], mode: str | None) -> str:
    return max(kept, key=lambda path: rank(kept[path], mode))  # the oldest among equals


def admit(
    kept: dict[str, float | None], path: str, score: float | None, replacing: str | None, k: int, mode: str | None
) -> tuple[dict[str, float | None], list[str]] | None:
    """Offer a new file to the top ``k``.

    Args:
        kept: path -> score of the files kept now, oldest first.
        path: the new file.
        score: its score (``None`` without a monitor).
        replacing: a kept file the new one supersedes (it leaves when the new one enters), or ``None``.
        k: ``save_top_k``: -1 keeps all.
        mode: ``"min"``/``"max"``; ``None`` without a monitor, when the latest ``k`` files are kept.

    Returns:
        The new ``kept`` and the files that leave it, or ``None`` when the new file does not enter (its score
        does not strictly beat the worst kept one).
    """
    others = {p: s for p, s in kept.items() if p not in (path, replacing)}
    if mode is not None and k != -1 and len(others) >= k and rank(score, mode) >= rank(
        others[_worst(others, mode)], mode
    ):
        return None
    kept = {**others, path: score}
    evicted = [replacing] if replacing is not None and replacing != path else []
    while k != -1 and len(kept) > k:
        worst = next(iter(kept)) if mode is None else _worst(kept, mode)
        evicted.append(worst)
        del kept[worst]
    return kept, evicted


def best_of(kept: dict[str, float | None], mode: str | None) -> tuple[str | None, float | None]:
    """The best kept file and its score: the best by ``mode``, or the latest when ``mode`` is ``None``.

    Returns:
        ``(path, score)``, or ``(None, None)`` when nothing is kept.
    """
    if not kept:
        return None, None
    if mode is None:
        return next(reversed(kept)), None
    best = min(kept, key=lambda path: rank(kept[path], mode))
    return best, kept[best]


def link_or_write(source: Path | None, destination: Path, state: dict[str, Any]) -> None:
    """Make ``destination`` a complete copy of ``source``, atomically: a hard link to it renamed over
    ``destination`` (no second write of the same bytes), or, where hard links fail or there is no source,
    ``state`` written again with ``save_atomic``. Never a symbolic link: deleting ``source`` later leaves
    ``destination`` intact, and checkpoints are only ever replaced whole, never modified in place.

    Raises:
        OSError: when neither works; ``destination`` is then unchanged.
    """
    if source is not None:
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
        try:
            os.link(source, temporary)
        except OSError:
            pass
        else:
            try:
                os.replace(temporary, destination)
            finally:
                temporary.unlink(missing_ok=True)
            return
    save_atomic(state, destination)


def _progress_of(path: Path) -> tuple[int, int, int]:
    if path.is_dir():  # a sharded checkpoint: its rank 0's plain part holds the progress
        progress = read_sharded(path)["loop"]["progress"]
        return int(progress["step"]), int(progress["epoch"]), int(progress["batch"])
    try:  # memory-mapped: the tensors are not read, only the small pickled structure
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        state = load_file(path)
    progress = state["loop"]["progress"]
    return int(progress["step"]), int(progress["epoch"]), int(progress["batch"])


def newest_checkpoint(folder: Path, last_name: str, exception_name: str) -> Path | None:
    """The complete checkpoint in ``folder`` that holds the most progress.

    A checkpoint is a file or a sharded checkpoint's folder (:mod:`~torchsystem_trainer.checkpoint.sharded`);
    a folder counts once its metadata is written (else its save did not finish: it is ignored), and its time is its
    metadata's. Temporary files (``.*.tmp``, the atomic writes in flight) and other hidden files are ignored, but
    for the folder a sharded ``last`` was moved to while its successor was renamed in place (``.<last>.ckpt.*.old``),
    considered while ``last`` is missing (a crash between the two renames). When
    ``<last_name>.ckpt`` exists, only it, the exception checkpoint and files modified after it are compared
    (so a folder of thousands of checkpoints is not read); otherwise every ``*.ckpt``. Files are ranked by the
    progress they hold (training batches, epoch, batch in epoch); ties go to ``last``, then to regular files
    over the exception checkpoint, then to the newest modification time.

    Args:
        folder: the checkpoint folder.
        last_name: the name of the ``last`` file, without extension.
        exception_name: the name of the exception checkpoint, without extension.

    Returns:
        The file, or ``None`` when there is none.

    Raises:
        CheckpointError: when the folder holds ``*.ckpt`` files and none of them is usable.

    Warns:
        UserWarning: for a ``*.ckpt`` file that is not a readable checkpoint of this library (it is skipped).
    """
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob(f"*{EXTENSION}") if not p.name.startswith(".") and is_complete(p)]
    last = folder / f"{last_name}{EXTENSION}"
    if last in files:
        since = _mtime(last)
        files = [p for p in files if p.stem in (last_name, exception_name) or _mtime(p) > since]
    else:
        files += [p for p in folder.glob(f".{last_name}{EXTENSION}.*.old") if (p / METADATA).is_file()]
    ranked: list[tuple[tuple[int, int, int, int, int], Path]] = []
    unusable: list[str] = []
    for path in files:
        try:
            progress = _progress_of(path)
        except (CheckpointError, KeyError, TypeError, ValueError) as error:
            warnings.warn(f"{str(path)!r} is not a usable checkpoint, skipped: {error}", stacklevel=3)
            unusable.append(path.name)
            continue
        kind = 2 if path.stem == last_name else 0 if path.stem == exception_name or path.name[0] == "." else 1
        ranked.append(((*progress, kind, _mtime(path)), path))
    if unusable and not ranked:  # never start from scratch silently over a folder of broken checkpoints
        raise CheckpointError(
            f"{str(folder)!r} holds checkpoints but none is usable ({', '.join(sorted(unusable))}); move them away "
            "to start from scratch, or pass ckpt_path to a good file"
        )
    return max(ranked)[1] if ranked else None


def _mtime(path: Path) -> int:
    """When a checkpoint was completed: a file's modification time, a sharded folder's metadata's."""
    return (path / METADATA if path.is_dir() else path).stat().st_mtime_ns


def warn_untracked(owner: str, folder: Path, ours: set[str | None]) -> None:
    """Warn when ``folder`` holds checkpoints that are not ``ours`` (a fit that does not resume, into a folder of
    an earlier run: ``ckpt_path="last"`` may later pick those files)."""
    untracked = sorted(p.name for p in folder.glob(f"*{EXTENSION}") if str(p) not in ours) if folder.is_dir() else []
    if untracked:
        listed = ", ".join(untracked[:5]) + ("..." if len(untracked) > 5 else "")
        warnings.warn(
            f"{owner}: {str(folder)!r} already holds checkpoints not from this run ({listed}); they are kept, new "
            f"files with the same names get a -vN suffix, and ckpt_path='last' may pick them",
            stacklevel=3,
        )
