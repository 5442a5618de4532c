"""One process, one device: CPU, one CUDA GPU, or Apple's MPS."""

from __future__ import annotations

import torch
from typing_extensions import override

from torchsystem_trainer.strategies.strategy import Strategy

__all__ = ["SingleDeviceStrategy", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a device request into an available device.

    Args:
        device: ``"auto"`` (CUDA if present, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
            or a ``torch.device``.

    Returns:
        The device; ``"cuda"`` resolves to the current CUDA device's index.

    Raises:
        ValueError: when ``device`` is not a device string.
        RuntimeError: when CUDA or MPS is asked for and not available, or ``cuda:N`` names a missing GPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r} is not a device; valid: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False here")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"indices 0..{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={device!r} asks for MPS, but torch.backends.mps.is_available() is False here")
    return resolved


class SingleDeviceStrategy(Strategy):
    """Train in this process on one device.

    Args:
        device: see :func:`resolve_device`.
        precision: ``"32-true"``, ``"64-true"``, ``"bf16-mixed"`` or ``"16-mixed"``
            (see :class:`~torchsystem_trainer.strategies.Precision`).

    Raises:
        ValueError: for a malformed device or an unknown precision (the message lists the valid values).
        RuntimeError: for a device that this machine does not have.
    """

    def __init__(self, device: str | torch.device = "auto", precision: str = "32-true") -> None:
        self._device = resolve_device(device)
        super().__init__(precision)

    @property
    @override
    def root_device(self) -> torch.device:
        return self._device
