"""Collectives over the default process group, for :class:`~torchsystem_trainer.strategies.ddp.DDPStrategy`.

The strategy's ``all_reduce``, ``all_gather``, ``broadcast`` and ``barrier`` check the group (:func:`require_group`;
with one process and no group they behave as :class:`~torchsystem_trainer.strategies.strategy.Strategy`'s) and
run the functions here, which assume a group. Each takes the device its collective runs on: the process's GPU
under NCCL, ``None`` under gloo (each tensor's own device).

Also gradient averaging outside ``DistributedDataParallel``'s hooks. DDP averages the gradients of the modules it
wraps during the backward pass. Two cases escape it: parameters outside every wrapped module, and a backward pass
run under ``no_sync`` that no synchronised one follows (a loader that ends inside an accumulation window). For
those the strategy averages here (:func:`average_gradients`), before the optimizer step, with the arithmetic DDP
uses (sum over the processes, divided by their number).
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from torchsystem_trainer.strategies.strategy import ReduceOp

__all__ = [
    "all_gather",
    "all_reduce",
    "average_gradients",
    "barrier",
    "broadcast",
    "check_reduce_op",
    "group_initialized",
    "require_group",
]

R = TypeVar("R")
_REDUCE_OPERATIONS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


def group_initialized() -> bool:
    """Whether this process has joined the default process group."""
    return dist.is_available() and dist.is_initialized()


def require_group(caller: str, world_size: int) -> bool:
    """Whether a collective of ``caller`` (``"DDPStrategy.all_reduce"``) can run in the default group.

    Returns:
        ``True`` with a group; ``False`` without one in a run of ``world_size`` 1 (the collective is then the
        single-process one).

    Raises:
        RuntimeError: without a group in a run of more than one process (outside the processes of a run).
    """
    if group_initialized():
        return True
    if world_size == 1:
        return False
    raise RuntimeError(
        f"{caller}: no process group; collectives run inside the processes of a run (in callbacks "
        "during Trainer.fit, or under torchrun)"
    )


def check_reduce_op(tensor: Tensor, op: ReduceOp) -> None:
    """Check that ``tensor`` can be reduced with ``op``, before any group is looked at.

    Raises:
        ValueError: for an ``op`` other than ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``.
        TypeError: for ``"mean"`` of an integer tensor.
    """
    if op not in _REDUCE_OPERATIONS:
        raise ValueError(f"all_reduce: op={op!r} is invalid; valid: {', '.join(_REDUCE_OPERATIONS)}")
    if op == "mean" and not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"all_reduce: op='mean' of a {tensor.dtype} tensor; use op='sum' or a floating tensor")


def all_reduce(tensor: Tensor, op: ReduceOp, device: torch.device | None) -> Tensor:
    """Reduce ``tensor`` over the processes of the default group with ``op``; the input is not modified.

    Args:
        tensor: any shape, the same on every process; ``"mean"`` needs a floating dtype.
        op: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``, checked by :func:`check_reduce_op`.
        device: where the reduction runs; ``None``: on ``tensor``'s device.

    Returns:
        The reduced tensor, on ``tensor``'s device, the same on every process.
    """
    result = tensor.detach().to(tensor.device if device is None else device, copy=True)
    dist.all_reduce(result, getattr(dist.ReduceOp, _REDUCE_OPERATIONS[op]))
    if op == "mean":
        result.div_(dist.get_world_size())
    return result.to(tensor.device)


def all_gather(tensor: Tensor, device: torch.device | None) -> Tensor:
    """Gather ``tensor`` from every process of the default group (not differentiable).

    Args:
        tensor: the same shape and dtype on every process.
        device: where the gather runs; ``None``: on ``tensor``'s device.

    Returns:
        ``[world_size, *tensor.shape]``, row ``r`` from rank ``r``, on ``tensor``'s device.
    """
    local = tensor.detach().to(tensor.device if device is None else device, copy=True).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts).to(tensor.device)


def broadcast(obj: R, src: int, device: torch.device | None) -> R:
    """Send ``obj`` from rank ``src`` to every process of the default group: a tensor (the same shape and dtype
    everywhere) or any picklable object.

    Args:
        device: where the broadcast runs; ``None``: on the tensor's device (an object: on the CPU).

    Returns:
        Rank ``src``'s ``obj`` (a new tensor; ``obj`` is not modified).
    """
    if isinstance(obj, Tensor):
        result = obj.detach().to(obj.device if device is None else device, copy=True)
        dist.broadcast(result, src)
        return result.to(obj.device)  # type: ignore[return-value]
    box = [obj]
    dist.broadcast_object_list(box, src, device=device)
    return box[0]


def barrier(device: torch.device | None) -> None:
    """Wait until every process of the default group reaches this point.

    Args:
        device: the process's GPU under NCCL (the barrier runs there); ``None`` otherwise.
    """
    if device is not None:
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def average_gradients(parameters: list[torch.nn.Parameter], device: torch.device) -> None:
    """Average the gradients of ``parameters`` over the processes of the default group, in place: one
    all-reduce to agree on which parameters have gradients, then one per dtype. A parameter with a gradient in
    some processes only gets zeros in the others, as if all their batches had been one.

    Every process must call this with the same parameters in the same order.

    Args:
        parameters: the parameters, in the same order on every process.
        device: where the collectives run (the process's GPU for NCCL, else the CPU).
    """
    world_size = dist.get_world_size() if group_initialized() else 1
    if not parameters or world_size == 1:
        return
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8, device=device)
    dist.all_reduce(present, dist.ReduceOp.MAX)
    grads: dict[torch.dtype, list[Tensor]] = {}
    for parameter, flag in zip(parameters, present.tolist(), strict=True):
        if not flag:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        grads.setdefault(parameter.grad.dtype, []).append(parameter.grad)
    for group in grads.values():
        flat = torch.cat([g.reshape(-1).to(device) for g in group])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for grad in group:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))  # back on the gradient's device
            offset += grad.numel()
