"""Run folders in Lightning's layout, shared by the loggers that write files (``TensorBoardLogger``,
``CSVLogger``)::

    <save_dir>/<name>/version_<N>/

``name`` defaults to the aggregate's class name, so a person reading the folder sees what was trained (the
registry hash, which identifies the exact configuration, is in the hyper-parameters). ``version=None`` takes the
next free ``version_N``: one more than the largest existing N, else 0, as Lightning does; an ``int`` N means
``version_N``; a ``str`` is the folder's name as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_version", "next_version", "run_folder"]


def check_version(owner: str, version: Any) -> int | str | None:
    """Check a logger's ``version`` argument.

    Args:
        owner: the logger's class name, for the message.
        version: ``None``, an int >= 0 or a non-empty string.

    Returns:
        ``version``, unchanged.

    Raises:
        ValueError: for anything else, naming the argument, its value and what is valid.
    """
    valid_int = isinstance(version, int) and not isinstance(version, bool) and version >= 0
    if not (version is None or valid_int or (isinstance(version, str) and version)):
        raise ValueError(f"{owner}: version={version!r} is invalid; valid: None, an int >= 0 or a non-empty str")
    return version  # type: ignore[no-any-return]


def next_version(root: Path) -> int:
    """The next free version number under ``root``: one more than the largest ``version_N`` there, else 0.

    Args:
        root: the experiment folder (``<save_dir>/<name>``); it need not exist.

    Returns:
        N >= 0.

    Raises:
        OSError: when ``root`` exists but cannot be listed.
    """
    if not root.is_dir():
        return 0
    taken = [
        int(entry.name[len("version_") :])
        for entry in root.iterdir()
        if entry.is_dir() and entry.name.startswith("version_") and entry.name[len("version_") :].isdigit()
    ]
    return max(taken) + 1 if taken else 0


def run_folder(save_dir: Path, name: str | None, version: int | str | None, aggregate: Any) -> Path:
    """The folder of a new run: ``<save_dir>/<name>/version_<N>`` (see the module docstring). Nothing is created.

    Args:
        save_dir: the logs' root.
        name: the experiment's folder; ``None`` for the aggregate's class name.
        version: ``None`` (the next free one), an int N or a folder name.
        aggregate: the aggregate, for the default name.

    Returns:
        The folder.

    Raises:
        OSError: when the experiment folder exists but cannot be listed.
    """
    root = save_dir / (name or type(aggregate).__name__)
    if isinstance(version, str):
        return root / version
    if isinstance(version, int):
        return root / f"version_{version}"
    return root / f"version_{next_version(root)}"
