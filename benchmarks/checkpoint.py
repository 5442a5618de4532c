"""The training loop's stall per checkpoint: ``ModelCheckpoint`` writing in the training thread vs in the background
(``async_save=True``), for networks of about 10 M and 100 M parameters with Adam (a checkpoint holds the weights and
Adam's two moments: 3 x 4 bytes per parameter, 0.12 GB and 1.2 GB).

    python -m benchmarks.checkpoint                  # 10 M and 100 M parameters, 3 rounds of 4 checkpoints per variant
    python -m benchmarks.checkpoint --quick          # a smoke run: a tiny network, 1 round of 2 checkpoints, in
                                                     # this process (no fresh process per variant: not a measurement)

Per size and round, three fits of the same network on the same batches, each in a process of its own (``--variant``
runs one), in an order rotated every round so that the machine's load drifts hit them alike: ``none`` (no
checkpoint), ``sync`` and ``async`` (a checkpoint every ``--every`` steps, ``save_last=True``, ``save_top_k=1``: a
file, a hard link, the previous file deleted). Measured:

* the stall: the time the training thread spends in the checkpoint's handler (``ModelCheckpoint.on_batch_trained``)
  at a checkpoint: the whole save (``torch.save``, ``fsync``, renames) for ``sync``; waiting for the previous
  background write (none, when it has finished), gathering the state and copying it into CPU memory for ``async``;
* the write: how long the background thread took to write the file (``async``), or the stall itself (``sync``);
* the fit: wall-clock time of the whole fit, so that what the background thread costs the training thread on a
  machine with few cores (it competes for them) shows too, as extra seconds per checkpoint over ``none``.

The claim (issue 16): the asynchronous stall is at most 10 % of the synchronous save's. Steps between checkpoints
are chosen so that the background write ends before the next checkpoint (``--every``); each variant's first
checkpoint is left out of the medians (its staging allocates the buffers the next ones reuse); the fit times are
medians over the rounds. Prints a Markdown table and writes JSON (``--out``). Timings vary with the machine's load:
the spread (min-max) of the stalls is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import ModelCheckpoint

SIZES: dict[str, tuple[int, int]] = {"10M": (1024, 10), "100M": (2048, 24), "quick": (64, 2)}
"""Size name: (width, layers) of ``layers`` x ``Linear(width, width)``: 10.5 M, 100.7 M parameters."""
VARIANTS = ("none", "sync", "async")
BATCH = 8


class Blocks(Aggregate):
    """``layers`` x (``Linear(width, width)``, ReLU), cross-entropy over ``width`` classes, Adam."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        for _ in range(layers):
            modules += [nn.Linear(width, width), nn.ReLU()]
        self.nn = nn.Sequential(*modules[:-1])
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=1e-4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


class TimedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that records how long each checkpoint's handler held the training thread (seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalls: list[float] = []

    def on_batch_trained(self, event: Any) -> None:
        start = time.perf_counter()
        super().on_batch_trained(event)
        if event.trainer.progress.global_step % self.every_n_steps == 0:
            self.stalls.append(time.perf_counter() - start)


def run_variant(size: str, variant: str, checkpoints: int, every: int, folder: Path) -> dict[str, Any]:
    """One fit (see the module docstring); returns its measurements."""
    torch.manual_seed(0)
    width, layers = SIZES[size]
    aggregate = Blocks(width, layers)
    parameters = sum(p.numel() for p in aggregate.parameters())
    steps = checkpoints * every
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, width, generator=generator), torch.randint(0, width, (BATCH,), generator=generator))
        for _ in range(steps)
    ]
    callbacks: list[Any] = []
    writes: list[float] = []
    checkpoint = None
    if variant != "none":
        checkpoint = TimedCheckpoint(
            folder, every_n_steps=every, save_top_k=1, save_last=True, async_save=variant == "async"
        )
        callbacks.append(checkpoint)
    trainer = Trainer(callbacks=callbacks, max_steps=steps, enable_progress_bar=False, enable_model_summary=False)
    with _timed_background_writes(writes) if variant == "async" else contextlib.nullcontext():
        start = time.perf_counter()
        trainer.fit(aggregate, batches)
        fit_s = time.perf_counter() - start
    stalls = checkpoint.stalls if checkpoint is not None else []
    size_bytes = sum(p.stat().st_size for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    return {
        "size": size,
        "variant": variant,
        "parameters": parameters,
        "steps": steps,
        "checkpoint_bytes": size_bytes,
        "stalls_s": stalls,
        "writes_s": writes if variant == "async" else stalls,
        "fit_s": fit_s,
    }


@contextlib.contextmanager
def _timed_background_writes(writes: list[float]) -> Iterator[None]:
    """Record how long each background write takes (the writer thread's ``write_files``: the file, ``last.ckpt``)
    during the block."""
    from torchsystem_trainer.callbacks import checkpoint_writes

    real_write = checkpoint_writes.write_files

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            real_write(*args, **kwargs)
        finally:
            writes.append(time.perf_counter() - start)

    checkpoint_writes.write_files = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        checkpoint_writes.write_files = real_write  # type: ignore[assignment]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the stalls' and writes' medians over every run (each run's first checkpoint left out) and their
    spread, the fits' medians over the rounds, and the ratio of the claim."""
    summary: dict[str, Any] = {}
    for size in dict.fromkeys(r["size"] for r in results):
        runs = {variant: [r for r in results if r["size"] == size and r["variant"] == variant] for variant in VARIANTS}
        any_run = next(r for r in results if r["size"] == size)
        row: dict[str, Any] = {"parameters": any_run["parameters"], "rounds": len(runs["none"]) or len(runs["sync"])}
        none_fit = _median([r["fit_s"] for r in runs["none"]])
        if runs["none"]:
            row["none"] = {"fit_s": none_fit}
        for name in ("sync", "async"):
            if not runs[name]:
                continue
            stalls = [value for r in runs[name] for value in (r["stalls_s"][1:] or r["stalls_s"])]
            writes = [value for r in runs[name] for value in (r["writes_s"][1:] or r["writes_s"])]
            fit = _median([r["fit_s"] for r in runs[name]])
            count = len(runs[name][0]["stalls_s"])
            row[name] = {
                "stall_s": _median(stalls),
                "stall_range_s": [min(stalls), max(stalls)] if stalls else None,
                "write_s": _median(writes),
                "fit_s": fit,
                "checkpoint_bytes": runs[name][0]["checkpoint_bytes"],
            }
            if runs["none"] and count:
                row[name]["extra_fit_s_per_checkpoint"] = (fit - none_fit) / count
        if "sync" in row and "async" in row:
            row["async_stall_over_sync_save"] = row["async"]["stall_s"] / row["sync"]["stall_s"]
        summary[size] = row
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| size | parameters | checkpoint | sync save (stall) | async stall | async / sync | background write "
        "| fit: none / sync / async |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in summary.items():
        sync, background = row.get("sync", {}), row.get("async", {})
        mib = (sync or background).get("checkpoint_bytes", 0) / 2**20
        lines.append(
            f"| {size} | {row['parameters'] / 1e6:.1f} M | {mib:.0f} MiB "
            f"| {_seconds(sync, 'stall_s')} | {_seconds(background, 'stall_s')} "
            f"| {row.get('async_stall_over_sync_save', float('nan')):.3f} | {_seconds(background, 'write_s')} "
            f"| {row.get('none', {}).get('fit_s', float('nan')):.1f} / {sync.get('fit_s', float('nan')):.1f} / "
            f"{background.get('fit_s', float('nan')):.1f} s |"
        )
    return "\n".join(lines)


def _seconds(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    spread = row.get("stall_range_s") if key == "stall_s" else None
    text = f"{row[key]:.3f} s"
    return text + (f" ({spread[0]:.3f}-{spread[1]:.3f})" if spread else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a tiny network, 2 checkpoints")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--checkpoints", type=int, default=None, help="checkpoints per variant (default 4)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--every", type=int, default=None, help="steps between checkpoints (default 10M: 6, 100M: 10)")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant here and print its JSON (internal)")
    parser.add_argument("--size", choices=list(SIZES), help="with --variant")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    options = parser.parse_args(argv)
    if options.variant is not None:
        with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as folder:
            result = run_variant(options.size, options.variant, options.checkpoints, options.every, Path(folder))
        print(json.dumps(result))
        return
    sizes = options.sizes or (["quick"] if options.quick else ["10M", "100M"])
    checkpoints = options.checkpoints or (2 if options.quick else 4)
    rounds = options.rounds or (1 if options.quick else 3)
    results = []
    for round_ in range(rounds):
        for size in sizes:
            every = options.every or {"10M": 6, "100M": 10}.get(size, 2)
            for variant in VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]:
                if options.quick:  # a smoke run checks the code path, not the timings: no interpreter start
                    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as folder:
                        result = run_variant(size, variant, checkpoints, every, Path(folder))
                else:
                    command = [
                        sys.executable, "-m", "benchmarks.checkpoint", "--variant", variant, "--size", size,
                        "--checkpoints", str(checkpoints), "--every", str(every),
                    ]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=True)
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                results.append({**result, "round": round_})
                stalls = ", ".join(f"{value:.3f}" for value in results[-1]["stalls_s"])
                fit = results[-1]["fit_s"]
                print(f"round {round_} {size} {variant}: fit {fit:.1f} s, stalls [{stalls}] s", flush=True)
    summary = summarize(results)
    report = {"quick": options.quick, "threads": torch.get_num_threads(), "summary": summary, "runs": results}
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "checkpoint-benchmark.json").write_text(json.dumps(report, indent=2))
    print(table(summary))


if __name__ == "__main__":
    main()
