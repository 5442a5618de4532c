"""Which devices, backend and timeout a data-parallel strategy uses: its arguments, checked and resolved.

Every function raises ``ValueError`` naming the argument, the value and the valid values (``RuntimeError`` for
hardware this machine does not have), as Lightning's accelerator connector does for its ``devices``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "resolve_accelerator",
    "resolve_backend",
    "resolve_devices",
    "resolve_timeout",
]

Accelerator = Literal["auto", "cpu", "cuda"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)


def resolve_accelerator(accelerator: str) -> Literal["cpu", "cuda"]:
    """``"auto"``: CUDA when available, else the CPU.

    Raises:
        ValueError: for a value outside :data:`ACCELERATORS`.
        RuntimeError: for ``"cuda"`` without CUDA.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"DDPStrategy: accelerator={accelerator!r} is invalid; valid: {', '.join(ACCELERATORS)}")
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DDPStrategy: accelerator='cuda', but torch.cuda.is_available() is False here")
    return accelerator  # type: ignore[return-value]


def resolve_devices(devices: Any, accelerator: str) -> tuple[int, list[int]]:
    """Resolve ``devices`` (see ``DDPStrategy``).

    Returns:
        ``(processes per machine, GPU index of each local rank)``; the list is empty on the CPU.

    Raises:
        ValueError: for a malformed value, or GPU indices on the CPU.
        RuntimeError: for more GPUs, or other indices, than this machine has.
    """
    valid = "'auto', an int >= 1, or (CUDA) a list of GPU indices"
    if isinstance(devices, str):
        if devices != "auto":
            raise ValueError(f"DDPStrategy: devices={devices!r} is invalid; valid: {valid}")
        if accelerator == "cpu":
            return 1, []
        return torch.cuda.device_count(), list(range(torch.cuda.device_count()))
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise ValueError(f"DDPStrategy: devices={devices!r} is invalid; valid: {valid}")
        if accelerator == "cpu":
            return devices, []
        if devices > torch.cuda.device_count():
            raise RuntimeError(
                f"DDPStrategy: devices={devices} GPUs asked for, this machine has {torch.cuda.device_count()}"
            )
        return devices, list(range(devices))
    indices = isinstance(devices, Sequence) and all(isinstance(d, int) and not isinstance(d, bool) for d in devices)
    if indices and devices:
        if accelerator == "cpu":
            raise ValueError(
                f"DDPStrategy: devices={list(devices)} lists GPU indices, but the accelerator is the CPU; give the "
                "number of processes (devices=2)"
            )
        count = torch.cuda.device_count()
        if len(set(devices)) != len(devices) or not all(0 <= d < count for d in devices):
            raise RuntimeError(
                f"DDPStrategy: devices={list(devices)}: GPU indices must be distinct, in 0..{count - 1} on this machine"
            )
        return len(devices), list(devices)
    raise ValueError(f"DDPStrategy: devices={devices!r} is invalid; valid: {valid}")


def resolve_backend(backend: str | None, accelerator: str) -> str:
    """``None``: ``"nccl"`` on CUDA, ``"gloo"`` on the CPU. A ``"device:backend,..."`` list passes unchecked.

    Raises:
        ValueError: for ``"nccl"`` on the CPU, or a backend this torch build lacks.
    """
    if backend is None:
        return "nccl" if accelerator == "cuda" else "gloo"
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"DDPStrategy: backend={backend!r} is invalid; valid: None, 'gloo', 'nccl', 'mpi', 'ucc'")
    if backend == "nccl" and accelerator != "cuda":
        raise ValueError("DDPStrategy: backend='nccl' needs accelerator='cuda'; on CPU use 'gloo' (the default)")
    if ":" not in backend and not dist.is_backend_available(backend):
        raise ValueError(
            f"DDPStrategy: backend={backend!r} is not available in this torch build; available: "
            f"{', '.join(b for b in ('gloo', 'nccl', 'mpi', 'ucc') if dist.is_backend_available(b))}"
        )
    return backend


def resolve_timeout(timeout: Any) -> timedelta:
    """A ``timedelta``, or seconds (> 0), as a ``timedelta``.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise ValueError(f"DDPStrategy: timeout={timeout!r} is invalid; valid: a timedelta or seconds > 0")
    if not seconds > 0:
        raise ValueError(f"DDPStrategy: timeout={timeout!r} is invalid; valid: a timedelta or seconds > 0")
    return timedelta(seconds=seconds)
