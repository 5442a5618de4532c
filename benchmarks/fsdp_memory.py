"""Memory per process under FSDPStrategy and DDPStrategy: parameters, gradients and optimizer state, measured.

    python -m benchmarks.fsdp_memory                         # 2 CPU processes (gloo), a 50.4 M-parameter MLP
    python -m benchmarks.fsdp_memory --accelerator cuda      # one process per GPU (NCCL), where there are 2+

Each strategy trains the same network (12 ``Linear(2048, 2048)`` with ReLU between, AdamW: 50.36 M parameters) for
one optimizer step on random data, launched by the Trainer. After the step, every process counts the bytes of the
tensors it holds itself (a ``DTensor`` by its local shard): parameters, gradients, optimizer state (AdamW:
``exp_avg``, ``exp_avg_sq``, ``step``), and reports its resident memory now and at its peak (the whole process:
torch itself, the activations, DDP's gradient buckets, and, for the peak, the full model every process unpickles
before FSDP shards it) and, on CUDA, the peak allocated GPU memory. The counts are exact, not timings: they do not
vary between runs. Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.strategies import DDPStrategy, FSDPStrategy

WIDTH, LAYERS, BATCH = 2048, 12, 4
MIB = 2**20


class Blocks(Aggregate):
    """``LAYERS`` x (``Linear(WIDTH, WIDTH)``, ReLU), cross-entropy over ``WIDTH`` classes, AdamW."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(LAYERS):
            layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
        self.nn = nn.Sequential(*layers[:-1])
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(self.nn.parameters(), lr=1e-4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


def _local_bytes(tensor: torch.Tensor | None) -> int:
    if tensor is None:
        return 0
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _resident() -> int:
    """This process's resident memory now, in bytes (Linux's /proc/self/statm; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * resource.getpagesize()


class Footprint(Callback):
    """After the first optimizer step, every process's bytes of parameters, gradients and optimizer state, and its
    peak memory; gathered to rank 0, whose state the Trainer hands back to the caller."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def on_batch_trained(self, event: Any) -> None:
        if self.rows:
            return
        aggregate, strategy = event.aggregate, event.trainer.strategy
        parameters = sum(_local_bytes(p) for p in aggregate.parameters())
        gradients = sum(_local_bytes(p.grad) for p in aggregate.parameters())
        optimizer = sum(
            _local_bytes(value)
            for state in aggregate.optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        cuda = torch.cuda.max_memory_allocated() if strategy.root_device.type == "cuda" else 0
        mine = torch.tensor([parameters, gradients, optimizer, _resident(), peak, cuda], dtype=torch.float64)
        self.rows = strategy.all_gather(mine.to(strategy.root_device)).cpu().tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"]


def measure(strategy: Any) -> list[dict[str, float]]:
    torch.manual_seed(0)
    aggregate = Blocks()
    count = sum(p.numel() for p in aggregate.parameters())
    inputs = torch.randn(BATCH * strategy.num_processes, WIDTH)
    targets = torch.randint(0, WIDTH, (BATCH * strategy.num_processes,))
    footprint = Footprint()
    Trainer(strategy=strategy, max_steps=1, callbacks=[footprint], enable_progress_bar=False).fit(
        aggregate, DataLoader(TensorDataset(inputs, targets), batch_size=BATCH)
    )
    keys = ("parameters", "gradients", "optimizer", "rss", "peak_rss", "peak_cuda")
    return [
        {"rank": rank, "model_parameters": count, **dict(zip(keys, row, strict=True))}
        for rank, row in enumerate(footprint.rows)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the results")
    arguments = parser.parse_args(argv)
    options = {"devices": arguments.devices, "accelerator": arguments.accelerator, "start_method": "spawn"}
    results = {
        "ddp": measure(DDPStrategy(**options)),
        "fsdp": measure(FSDPStrategy(auto_wrap_policy={nn.Linear}, **options)),
    }
    print(
        f"{results['ddp'][0]['model_parameters'] / 1e6:.2f} M parameters, {arguments.devices} processes "
        f"({arguments.accelerator}), AdamW, after one step; MiB per process (rank 0's)\n"
    )
    print("| strategy | parameters | gradients | optimizer state | sum | RSS after the step | peak RSS | peak CUDA |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        row = rows[0]
        total = row["parameters"] + row["gradients"] + row["optimizer"]
        counted = [row["parameters"], row["gradients"], row["optimizer"], total]
        measured = [row["rss"], row["peak_rss"], row["peak_cuda"]]
        cells = [f"{value / MIB:.1f}" for value in counted] + [f"{value / MIB:.0f}" for value in measured]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ddp, fsdp = (sum(results[n][0][k] for k in ("parameters", "gradients", "optimizer")) for n in ("ddp", "fsdp"))
    print(f"\nFSDP / DDP (parameters + gradients + optimizer state): {fsdp / ddp:.3f}")
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
