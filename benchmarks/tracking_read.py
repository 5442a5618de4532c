"""How long ``Tracker.metrics`` takes to read 100 runs x 100 epochs x 10 metrics (100,000 rows) from SQLite.

``python -m benchmarks.tracking_read [--runs 100] [--epochs 100] [--metrics 10] [--repeats 5]``: builds a store in
a temporary folder (the runs through RunTracker's own units of work, the metric rows in one transaction), then
times, in this process, the median (wall-clock and CPU) of ``--repeats`` reads of every metric of the model (``metrics(model=...)``),
of the whole store (``metrics()``) and of one metric over the model's runs (``phase="validation",
name="loss"``), each returning frozen dataclasses. The store is opened once; the first read is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from torchsystem_trainer.tracking import Tracker, schema, units
from torchsystem_trainer.tracking.engine import now_ms, open_engine


def build(url: str, runs: int, epochs: int, metrics: int) -> str:
    """Write the store; return the model's hash."""
    engine = open_engine(url)
    model = {"hash": "m" * 32, "name": "MLP", "arguments": {"hidden": 256}}
    ids = []
    for index in range(runs):
        run_id = f"{index:032x}"
        ids.append(run_id)
        run = {"id": run_id, "experiment": "bench", "stage": "fit", "host": "h", "pid": 1, "world_size": 1,
               "precision": "32-true", "torch_version": "t", "library_version": "l", "python_version": "p",
               "checkpoint_dir": None, "start_epoch": 0, "step": 0}
        with engine.begin() as connection:
            units.start_run(run, model, [], False, now_ms(), 60.0)(connection)
    names = [f"metric_{k}" for k in range(metrics)]
    rows = [{"run_id": run_id, "phase": "validation" if k % 2 else "train", "epoch": epoch, "step": 100 * (epoch + 1),
             "name": "loss" if k == 1 else names[k], "value": 1.0 / (epoch + k + 1)}
            for run_id in ids for epoch in range(epochs) for k in range(metrics)]
    with engine.begin() as connection:
        connection.execute(insert(schema.metrics), rows)
    engine.dispose()
    return str(model["hash"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'runs.db'}"
        model = build(url, options.runs, options.epochs, options.metrics)
        with Tracker(url) as tracker:
            cases = {
                "metrics(model=...)": lambda: tracker.metrics(model=model),
                "metrics()": lambda: tracker.metrics(),
                "metrics(model=..., phase='validation', name='loss')":
                    lambda: tracker.metrics(model=model, phase="validation", name="loss"),
            }
            for label, read in cases.items():
                count = len(read())
                times, cpu = [], []
                for _ in range(options.repeats):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    read()
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
                print(f"{label:<55} {count:>7} rows: median {statistics.median(times):.3f} s "
                      f"(min {min(times):.3f}, max {max(times):.3f}; CPU median {statistics.median(cpu):.3f} s; "
                      f"{options.repeats} reads)")


if __name__ == "__main__":
    main()
