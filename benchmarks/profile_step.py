"""Profile the bare Trainer's per-step path: which of our functions run per batch, and what they cost.

Runs ``Trainer(enable_progress_bar=False).fit`` (no callbacks) on a workload in this process, under

* ``--profiler cprofile`` (default, standard library): every function of ``torchsystem_trainer`` (and of the
  helpers it calls per batch: ``lightning_utilities``, ``contextlib``, ``abc``) called at least once per step,
  with calls per step and microseconds per call. Deterministic profiling inflates small functions several times
  over; read the table for *what* runs per step and its relative weight, not for absolute times;
* ``--profiler pyinstrument`` (``pip install pyinstrument``): a sampled call tree of the fit.

Absolute per-step overhead is measured by :mod:`benchmarks.compare` (``us/step``), or, with less noise, by
``--overhead``: the bare Trainer against the raw loop in this process on a tiny model (``Linear(32, 10)``,
batch 16, 2000 steps), where the loop's overhead dominates, alternated ``--repeats`` times, CPU time
(``time.process_time``), reporting the median paired difference in microseconds per step.

Run::

    python -m benchmarks.profile_step --workload mlp [--profiler pyinstrument] [--trainer-path DIR]
    python -m benchmarks.profile_step --overhead [--trainer-path DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["main", "measure_overhead", "our_functions"]

OURS = ("torchsystem_trainer", "lightning_utilities", "contextlib.py", "<frozen abc>")


def our_functions(stats: pstats.Stats, steps: int) -> list[tuple[float, float, str]]:
    """``(calls per step, microseconds per call, name)`` of our functions called at least once per step."""
    rows = []
    for (file, line, name), (_, calls, total, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if calls >= steps and any(part in file for part in OURS):
            short = file.split("site-packages/")[-1]
            if "torchsystem_trainer" in short:
                short = "torchsystem_trainer" + short.split("torchsystem_trainer", 1)[1]
            rows.append((calls / steps, total / calls * 1e6, f"{short}:{line}({name})"))
    return sorted(rows, key=lambda row: -row[0] * row[1])


def _profile(workload_name: str, profiler: str, quick: bool) -> None:
    from benchmarks.variants import _trainer
    from benchmarks.workloads import load

    workload, data = load(workload_name, quick)
    steps = workload.steps(data)
    _, fit = _trainer(workload, data, torch.device("cpu"), Path("."))
    if profiler == "pyinstrument":
        from pyinstrument import Profiler

        sampler = Profiler(interval=0.0005)
        sampler.start()
        fit()
        sampler.stop()
        print(sampler.output_text(unicode=False, color=False))
        return
    profile = cProfile.Profile()
    profile.enable()
    fit()
    profile.disable()
    rows = our_functions(pstats.Stats(profile), steps)
    print(f"{workload_name}: {steps} steps; our functions called per step (cProfile; times inflated by profiling)")
    print(f"{'calls/step':>10}{'us/call':>9}  function")
    for per_step, micros, name in rows:
        print(f"{per_step:>10.1f}{micros:>9.2f}  {name}")
    print(f"{'':>10}{sum(p * m for p, m, _ in rows):>9.1f}  total per step (self time, profiled)")


def measure_overhead(repeats: int = 20, steps: int = 2000) -> list[float]:
    """The bare Trainer's per-step overhead over the raw loop, in CPU microseconds, one value per repeat.

    Each repeat times the raw loop, the Trainer, the raw loop again, on a tiny model, and records
    ``trainer - mean(raw, raw)`` divided by ``steps``.
    """
    from torchsystem_trainer import Aggregate, Trainer

    class Model(Aggregate):
        def __init__(self, net: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
            super().__init__()
            self.nn, self.criterion, self.optimizer = net, criterion, optimizer

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.nn(inputs)  # type: ignore[no-any-return]

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(steps * 16, 32, generator=generator)
    targets = torch.randint(0, 10, (steps * 16,), generator=generator)
    batches = list(zip(inputs.split(16), targets.split(16)))
    device = torch.device("cpu")

    def parts() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        net = nn.Linear(32, 10)
        return net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01)

    def raw() -> float:
        net, criterion, optimizer = parts()
        start = time.process_time()
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
        return time.process_time() - start

    def trainer() -> float:
        model = Model(*parts())
        start = time.process_time()
        Trainer(max_epochs=1, enable_progress_bar=False, strategy="cpu").fit(model, batches)
        return time.process_time() - start

    raw(), trainer()  # warm-up
    overheads = []
    for _ in range(repeats):
        before, ours, after = raw(), trainer(), raw()
        overheads.append((ours - (before + after) / 2) / steps * 1e6)
    return overheads


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp")
    parser.add_argument("--profiler", default="cprofile", choices=["cprofile", "pyinstrument"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overhead", action="store_true", help="measure the per-step overhead on a tiny model")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trainer-path", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.trainer_path is not None:
        sys.path.insert(0, str(args.trainer_path.resolve()))
    if args.overhead:
        values = measure_overhead(args.repeats)
        quartiles = statistics.quantiles(values, n=4)
        source = sys.modules["torchsystem_trainer"].__file__
        print(
            f"bare Trainer over the raw loop: {statistics.median(values):+.2f} us/step CPU time "
            f"(median of {args.repeats}; quartiles {quartiles[0]:+.2f} .. {quartiles[2]:+.2f}); package: {source}"
        )
        return
    _profile(args.workload, args.profiler, args.quick)


if __name__ == "__main__":
    main()
