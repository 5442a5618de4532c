"""Gradient averaging outside ``DistributedDataParallel``'s hooks.

DDP averages the gradients of the modules it wraps during the backward pass. Two cases escape it: parameters
outside every wrapped module, and a backward pass run under ``no_sync`` that no synchronised one follows (a loader
that ends inside an accumulation window). For those the strategy averages here, before the optimizer step, with
the arithmetic DDP uses (sum over the processes, divided by their number).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["average_gradients"]


def average_gradients(parameters: list[torch.nn.Parameter], device: torch.device) -> None:
    """Average the gradients of ``parameters`` over the processes of the default group, in place: one
    all-reduce to agree on which parameters have gradients, then one per dtype. A parameter with a gradient in
    some processes only gets zeros in the others, as if all their batches had been one.

    Every process must call this with the same parameters in the same order.

    Args:
        parameters: the parameters, in the same order on every process.
        device: where the collectives run (the process's GPU for NCCL, else the CPU).
    """
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not parameters or world_size == 1:
        return
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8, device=device)
    dist.all_reduce(present, dist.ReduceOp.MAX)
    grads: dict[torch.dtype, list[Tensor]] = {}
    for parameter, flag in zip(parameters, present.tolist()):
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
