"""On a GPU, side by side in one process: the raw PyTorch loop, the Trainer and Lightning, on a ResNet-18 and a
small GPT. Throughput, ratios, peak GPU memory and the per-step host overhead.

    python -m benchmarks.gpu                            # CUDA; 5 interleaved rounds, about a minute on a recent GPU
    python -m benchmarks.gpu --device cpu --quick       # a smoke run on tiny sizes: the numbers mean nothing
    python -m benchmarks.gpu --out DIR                  # where gpu-benchmark.json and gpu-benchmark.md go

Workloads (networks in :mod:`benchmarks.gpu_networks`, synthetic data from a fixed seed):

* ``resnet18``: ResNet-18 for CIFAR-shaped images ``[256, 3, 32, 32]``, 10 classes, ``channels_last``,
  ``bf16-mixed``, SGD with momentum.
* ``gpt``: a GPT of 6 layers, width 512, 8 heads, sequences of 256 tokens from a vocabulary of 8192, batch 32,
  ``bf16-mixed``, AdamW.

Variants, each building the same network from the same seed and training on the same batches: ``raw`` (a ``for``
loop: move the batch with ``non_blocking=True``, ``zero_grad``, forward and loss under ``torch.autocast``,
``backward``, ``step``); ``trainer`` (an ``Aggregate`` with the default learner step,
``Trainer(strategy=SingleDeviceStrategy(device, "bf16-mixed"))``, no callbacks); ``lightning`` (a
``LightningModule``, ``precision="bf16-mixed"``, logger, checkpointing, progress bar and summary off; left out when
Lightning is not installed).

Method. Batches are built before any clock starts, in pinned host memory, and every variant copies them to the GPU
itself. A round runs every variant once per workload, in an order rotated each round, all in this process
(``torch.backends.cudnn.benchmark`` on for all). Each fit trains ``--warmup`` + ``--steps`` + 1 batches; the clock
(:class:`Clock`) synchronises the GPU when the loop asks for batch ``--warmup`` and when it asks for the last one,
so the window holds ``--steps`` whole steps of every variant (Lightning fetches one batch ahead, which shifts its
window by one step, not its length) and no set-up or teardown. Reported per workload and variant (medians over rounds):

* samples/s in the window, and the throughput ratio to the raw loop with a 95 % bootstrap interval over rounds;
* the whole fit (building the trainer, set-up, warm-up, the window, teardown) in seconds;
* peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each fit);
* CPU time per step in the window (while the GPU is the bottleneck the host also waits in the driver, so it
  includes that wait);
* host time per step, measured by a second fit on a launch-bound copy of the workload (the same network on a batch
  of 2, or 1 sequence of 32 tokens): there the GPU waits for the host, so the wall time per step is the host's,
  and its difference from the raw loop's is the per-step host overhead of the Trainer or Lightning.

Verdicts (issue 17), PASS/FAIL only when the whole interval is on one side: Trainer / raw throughput >= 0.98 on each
workload; Lightning / Trainer time >= 1.1 on the GPT, on the whole fit (as ``benchmarks.compare`` times a fit), with
the window's ratio beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.gpu_networks import GPT, ResNet18, TokenCrossEntropy
from benchmarks.gpu_report import markdown, plain, summarise, verdicts
from benchmarks.variants import SEED, lightning_module
from benchmarks.workloads import Batches

__all__ = ["VARIANTS", "WORKLOADS", "Clock", "main", "run"]

DATA_SEED = 1234
POOL = 8  # distinct batches per workload, cycled


@dataclass(frozen=True)
class Workload:
    """One case: ``network(quick)``, one synthetic ``batch(size, generator)`` of ``(inputs, targets)`` on the CPU
    (``size`` is ``"full"``, ``"probe"`` or ``"quick"``), the loss and the optimizer."""

    name: str
    description: str
    network: Callable[[bool], nn.Module]
    batch: Callable[[str, torch.Generator], tuple[Tensor, Tensor]]
    criterion: Callable[[], nn.Module]
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    channels_last: bool


def _images(size: str, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    batch = {"full": 256, "probe": 2, "quick": 2}[size]
    inputs = torch.randn(batch, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    return inputs, torch.randint(0, 10, (batch,), generator=generator)


def _tokens(size: str, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    batch, length, vocabulary = {"full": (32, 256, 8192), "probe": (1, 32, 8192), "quick": (2, 16, 64)}[size]
    tokens = torch.randint(0, vocabulary, (batch, length + 1), generator=generator)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


WORKLOADS: dict[str, Workload] = {
    "resnet18": Workload(
        name="resnet18",
        description="ResNet-18 (CIFAR form), batch 256 of [3, 32, 32], channels_last, bf16-mixed, SGD + momentum",
        network=lambda quick: ResNet18(width=4 if quick else 64),
        batch=_images,
        criterion=nn.CrossEntropyLoss,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        channels_last=True,
    ),
    "gpt": Workload(
        name="gpt",
        description="GPT, 6 layers, width 512, 8 heads, 256 tokens (vocabulary 8192), batch 32, bf16-mixed, AdamW",
        network=lambda quick: GPT(64, 16, 32, 2, 2) if quick else GPT(8192, 256, 512, 6, 8),
        batch=_tokens,
        criterion=TokenCrossEntropy,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-4),
        channels_last=False,
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """The batches of one fit, timing the window from the moment the loop asks for batch ``start`` to the moment it
    asks for batch ``end``: the steps ``start`` to ``end - 1`` of a loop that runs a step on each batch as it gets
    it, one step earlier for one that fetches a batch ahead (Lightning), the same number either way. The GPU is
    synchronised at both marks, so the window holds whole steps; the batches after ``end`` are not timed.

    Attributes:
        marks: ``{"start": (wall s, CPU s), "end": (wall s, CPU s)}`` once reached.
    """

    def __init__(self, batches: list[tuple[Tensor, Tensor]], start: int, end: int, device: torch.device) -> None:
        if not 0 <= start < end < len(batches):
            raise ValueError(f"Clock: start={start}, end={end} must satisfy 0 <= start < end < {len(batches)} batches")
        self.batches, self.start, self.end, self.device = Batches(batches), start, end, device
        self.marks: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index, batch in enumerate(self.batches):
            if index in (self.start, self.end):
                self._mark("start" if index == self.start else "end")
            yield batch

    def _mark(self, name: str) -> None:
        _sync(self.device)
        self.marks[name] = (time.perf_counter(), time.process_time())

    def window(self) -> tuple[float, float]:
        """``(wall s, CPU s)`` of the window.

        Raises:
            RuntimeError: when the loop did not reach batch ``end``.
        """
        if set(self.marks) != {"start", "end"}:
            raise RuntimeError(f"the loop stopped early: marks {sorted(self.marks)}, {len(self)} batches")
        (wall0, cpu0), (wall1, cpu1) = self.marks["start"], self.marks["end"]
        return wall1 - wall0, cpu1 - cpu0


# -- variants: each builds its network from SEED and returns it and fit(loader) ---------------------------------

Fit = Callable[[Iterable[Any]], None]


def _network(workload: Workload, quick: bool) -> nn.Module:
    torch.manual_seed(SEED)
    network = workload.network(quick)
    return network.to(memory_format=torch.channels_last) if workload.channels_last else network


def _raw(workload: Workload, device: torch.device, quick: bool, folder: Path) -> tuple[nn.Module, Fit]:
    network = _network(workload, quick).to(device)
    criterion, optimizer = workload.criterion(), workload.optimizer(network.parameters())

    def fit(loader: Iterable[Any]) -> None:
        network.train()
        for inputs, targets in loader:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = criterion(network(inputs), targets)
            loss.backward()
            optimizer.step()

    return network, fit


def _trainer(workload: Workload, device: torch.device, quick: bool, folder: Path) -> tuple[nn.Module, Fit]:
    from torchsystem_trainer import Aggregate, Trainer
    from torchsystem_trainer.strategies import SingleDeviceStrategy

    class Model(Aggregate):
        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.nn, self.criterion = network, workload.criterion()
            self.optimizer = workload.optimizer(network.parameters())

        def forward(self, inputs: Tensor) -> Tensor:
            return self.nn(inputs)  # type: ignore[no-any-return]

    model = Model(_network(workload, quick))

    def fit(loader: Iterable[Any]) -> None:
        strategy = SingleDeviceStrategy(device, "bf16-mixed")
        quiet = {"enable_model_summary": False, "verbose": False}  # as Lightning's side: no summary, no lines
        Trainer(strategy=strategy, max_epochs=1, enable_progress_bar=False, default_root_dir=folder, **quiet).fit(
            model, loader
        )

    return model.nn, fit


def _lightning(workload: Workload, device: torch.device, quick: bool, folder: Path) -> tuple[nn.Module, Fit]:
    pl = lightning_module()
    assert pl is not None, "run() leaves Lightning out when it is not installed"

    class Module(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.net, self.criterion = network, workload.criterion()

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            inputs, targets = batch
            return self.criterion(self.net(inputs), targets)  # type: ignore[no-any-return]

        def configure_optimizers(self) -> Any:
            return workload.optimizer(self.net.parameters())

    module = Module(_network(workload, quick))

    def fit(loader: Iterable[Any]) -> None:
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision="bf16-mixed",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            benchmark=torch.backends.cudnn.benchmark,
            default_root_dir=folder,
        )
        trainer.fit(module, loader)

    return module.net, fit


VARIANTS: dict[str, Callable[[Workload, torch.device, bool, Path], tuple[nn.Module, Fit]]] = {
    "raw": _raw,
    "trainer": _trainer,
    "lightning": _lightning,
}


# -- measuring --------------------------------------------------------------------------------------------------


def _batches(workload: Workload, size: str, count: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(DATA_SEED)
    pool = [workload.batch(size, generator) for _ in range(min(POOL, count))]
    if device.type == "cuda":
        pool = [(inputs.pin_memory(), targets.pin_memory()) for inputs, targets in pool]
    return [pool[index % len(pool)] for index in range(count)]


def measure(
    workload: Workload,
    variant: str,
    device: torch.device,
    batches: list[tuple[Tensor, Tensor]],
    warmup: int,
    quick: bool,
) -> dict[str, Any]:
    """Build ``variant`` and fit it once on ``batches``; time the steps after the first ``warmup``, all but the last.

    Returns:
        ``window_s``, ``window_cpu_s``, ``fit_s`` (seconds), ``steps`` (in the window), ``samples`` (per step),
        ``peak_bytes`` (``None`` on the CPU), and ``weights``: the trained network's ``state_dict``, copied to the
        CPU (the network itself is let go, so that it holds no GPU memory during the next variant's fit).
    """
    with tempfile.TemporaryDirectory(prefix=f"gpu-bench-{workload.name}-{variant}-") as folder:
        network, fit = VARIANTS[variant](workload, device, quick, Path(folder))
        clock = Clock(batches, warmup, len(batches) - 1, device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        started = time.perf_counter()
        fit(clock)
        _sync(device)
        fit_s = time.perf_counter() - started
        weights = {key: value.detach().to("cpu", copy=True) for key, value in network.state_dict().items()}
    del network, fit
    window, window_cpu = clock.window()
    return {
        "window_s": window,
        "window_cpu_s": window_cpu,
        "fit_s": fit_s,
        "steps": len(batches) - 1 - warmup,
        "samples": int(batches[0][0].shape[0]),
        "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "weights": weights,
    }


def _max_difference(weights: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    pairs = zip(weights.values(), reference.values(), strict=True)
    return max(float((a.float() - b.float()).abs().max()) for a, b in pairs if a.is_floating_point())


def run(
    device: torch.device,
    workloads: list[str],
    variants: list[str],
    rounds: int,
    steps: int,
    warmup: int,
    probe_steps: int,
    quick: bool,
    on_round: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (round, workload, variant), interleaved; see the module docstring. ``on_round(samples)`` is called
    after every round with the samples so far.

    Returns:
        One sample per (round, workload, variant): :func:`measure`'s numbers (without the network), ``probe_step_s``
        (host time per step of the launch-bound copy; ``None`` with ``probe_steps=0``) and ``max_weight_diff`` (the
        largest difference of the final weights from the raw loop's in the same round; ``None`` without it).
    """
    samples: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for name in workloads:
            workload = WORKLOADS[name]
            batches = _batches(workload, "quick" if quick else "full", warmup + steps + 1, device)
            probe = None
            if probe_steps:
                probe = _batches(workload, "quick" if quick else "probe", warmup + probe_steps + 1, device)
            order = variants[round_index % len(variants) :] + variants[: round_index % len(variants)]
            trained: dict[str, dict[str, Tensor]] = {}
            for variant in order:
                result = measure(workload, variant, device, batches, warmup, quick)
                trained[variant] = result.pop("weights")
                if probe is not None:
                    probed = measure(workload, variant, device, probe, warmup, quick)
                    result["probe_step_s"] = probed["window_s"] / probed["steps"]
                else:
                    result["probe_step_s"] = None
                samples.append({"round": round_index, "workload": name, "variant": variant, **result})
            for sample in samples[-len(order) :]:
                raw = trained.get("raw")
                sample["max_weight_diff"] = None if raw is None else _max_difference(trained[sample["variant"]], raw)
        if on_round is not None:
            on_round(samples)
    return samples


# -- the run ----------------------------------------------------------------------------------------------------


def environment(device: torch.device, arguments: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    """What ran where: versions, the device, the settings."""
    pl = lightning_module()
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "lightning": None if pl is None else getattr(sys.modules.get(pl.__name__.split(".")[0]), "__version__", "?"),
        "python": platform.python_version(),
        "quick": arguments.quick,
        "rounds": arguments.rounds,
        "steps": arguments.steps,
        "warmup": arguments.warmup,
        "probe_steps": arguments.probe_steps,
        "variants": variants,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in info.items() if key not in ("windows", "fits")}  # per round: in samples


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: see the module docstring and ``--help``. Returns the report it wrote."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per fit (default 50; quick: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; quick: 1)")
    parser.add_argument("--probe-steps", type=int, default=None, help="launch-bound steps (default 30; 0: none)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("runs") / "gpu-benchmark", help="folder of the reports")
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    for name, full, small in (("rounds", 5, 2), ("steps", 50, 1), ("warmup", 10, 1), ("probe_steps", 30, 1)):
        if getattr(arguments, name) is None:
            setattr(arguments, name, small if quick else full)
    device = torch.device(arguments.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {arguments.device}: torch.cuda.is_available() is False here (use --device cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    workloads = [name for name in arguments.workloads.split(",") if name]
    variants = [name for name in arguments.variants.split(",") if name]
    unknown = sorted(set(workloads) - set(WORKLOADS)) + sorted(set(variants) - set(VARIANTS))
    counts = (arguments.rounds, arguments.steps, arguments.warmup, arguments.probe_steps + 1)
    if unknown or not workloads or not variants or min(counts) < 1:
        parser.error(f"unknown workloads or variants {unknown}, or rounds/steps/warmup < 1, or probe-steps < 0")
    skipped = []
    if "lightning" in variants and lightning_module() is None:
        variants.remove("lightning")
        skipped.append("lightning (not installed: pip install lightning)")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    arguments.out.mkdir(parents=True, exist_ok=True)
    partial = arguments.out / "gpu-benchmark.samples.json"  # after every round: what a timeout leaves

    def keep(samples: list[dict[str, Any]]) -> None:
        partial.write_text(json.dumps(plain(samples), indent=1) + "\n")

    samples = run(
        device, workloads, variants, arguments.rounds, arguments.steps, arguments.warmup, arguments.probe_steps, quick,
        keep,
    )
    summary = summarise(samples)
    suffix = " (quick: tiny sizes)" if quick else ""
    report = {
        "benchmark": "gpu",
        "environment": environment(device, arguments, variants),
        "descriptions": {name: WORKLOADS[name].description + suffix for name in workloads},
        "workloads": {name: {variant: _public(info) for variant, info in of.items()} for name, of in summary.items()},
        "verdicts": verdicts(summary, judged=not quick),
        "skipped": skipped,
        "samples": samples,
    }
    report = plain(report)
    (arguments.out / "gpu-benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (arguments.out / "gpu-benchmark.md").write_text(text)
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
