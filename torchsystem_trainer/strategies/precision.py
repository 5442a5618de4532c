"""Numeric precision: at what dtype parameters live and arithmetic runs, and fp16 loss scaling.

Follows Lightning's precision names (``"32-true"``, ``"64-true"``, ``"bf16-mixed"``, ``"16-mixed"``) and PyTorch's
automatic mixed precision recipe (``torch.autocast`` + ``torch.amp.GradScaler``, see "Automatic Mixed Precision
examples" in the PyTorch docs): gradients are unscaled before clipping, and a step whose gradients hold inf or NaN
is skipped by the scaler.
"""

from __future__ import annotations

import contextlib
import warnings
from contextlib import AbstractContextManager
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["PRECISIONS", "Precision", "PrecisionType"]

PrecisionType = Literal["32-true", "64-true", "bf16-mixed", "16-mixed"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionType)


class Precision:
    """The precision plugin of a strategy.

    Args:
        precision: one of ``"32-true"`` (float32 parameters and arithmetic), ``"64-true"`` (float64 parameters
            and floating inputs), ``"bf16-mixed"`` (float32 parameters, ``torch.autocast`` to bfloat16, CPU
            too), ``"16-mixed"`` (float32 parameters, autocast to float16 and a ``GradScaler``).
        device: the device the arithmetic runs on; its type picks the autocast backend.

    Raises:
        ValueError: for an unknown ``precision``, listing the valid values.

    Warns:
        UserWarning: for ``"16-mixed"`` on the CPU, suggesting ``"bf16-mixed"``.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported; valid values: {', '.join(PRECISIONS)}")
        self.precision: PrecisionType = precision  # type: ignore[assignment]
        self.device_type = device.type
        self.autocast_dtype: torch.dtype | None = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(
            precision
        )
        if precision == "16-mixed" and device.type == "cpu":
            warnings.warn(
                "precision='16-mixed' on the CPU: float16 autocast there is slow and needs loss scaling; "
                "precision='bf16-mixed' is the CPU's mixed precision (bfloat16 has float32's range, no scaler)",
                UserWarning,
                stacklevel=3,
            )
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        )

    def forward_context(self) -> AbstractContextManager[Any]:
        """The context the aggregate's ``fit``/``evaluate`` run under: ``torch.autocast`` for the mixed
        precisions, a no-op otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def convert_module(self, module: torch.nn.Module) -> None:
        """Cast ``module``'s floating parameters and buffers in place (``64-true`` only). Parameter objects are
        kept, so optimizers built before still hold them."""
        if self.precision == "64-true":
            module.to(torch.float64)

    @property
    def converts_inputs(self) -> bool:
        """Whether :meth:`convert_input` changes anything (only ``64-true`` does)."""
        return self.precision == "64-true"

    def convert_input(self, tensor: Tensor) -> Tensor:
        """Cast a floating input tensor to the parameters' dtype (``64-true``); others pass unchanged."""
        if self.precision == "64-true" and tensor.is_floating_point():
            return tensor.to(torch.float64)
        return tensor

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` (``[]`` scalar), multiplied by the scaler's scale factor under ``16-mixed``."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def unscale(self, optimizer: Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale factor in place (``16-mixed``), before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Optimizer) -> Any:
        """Call ``optimizer.step()``, through the scaler under ``16-mixed``: the scaler skips the step when the
        gradients hold inf or NaN, and then lowers its scale factor.

        Returns:
            What ``optimizer.step()`` returned; ``None`` for a skipped step.
        """
        if self.scaler is None:
            return optimizer.step()
        result = self.scaler.step(optimizer)
        self.scaler.update()
        return result

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty when there is no scaler)."""
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
