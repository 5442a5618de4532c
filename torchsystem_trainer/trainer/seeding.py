"""Seeding and deterministic algorithms for reproducible runs."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import torch

__all__ = ["deterministic_algorithms", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator (when NumPy is installed) and torch (CPU and every
    CUDA device), and set ``PYTHONHASHSEED`` for child processes, as Lightning's ``seed_everything`` does.

    Args:
        seed: any integer in ``[0, 2**32 - 1]``.

    Raises:
        ValueError: for a seed outside that range.
    """
    if not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed={seed} is outside [0, 2**32 - 1]")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        pass
    else:
        numpy.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, make torch pick deterministic algorithms (``torch.use_deterministic_algorithms``,
    cuDNN deterministic and not benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``); restore the previous
    settings after. Does nothing when ``enabled`` is False."""
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]
        if previous[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
