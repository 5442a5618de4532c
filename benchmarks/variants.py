"""One benchmark run in this process: one workload, one variant; prints one ``BENCH-RESULT {json}`` line.

:mod:`benchmarks.compare` starts this module once per (round, workload, variant), each time in a fresh
process, so no variant inherits another's imports, allocator state or warm caches. Run it directly to time or
debug a single case::

    python -m benchmarks.variants --workload mlp --variant trainer

Variants (all train the same network from the same seed on the same batches, in the same order):

==================  ===========================================================================================
``raw``             the hand-written PyTorch loop: ``zero_grad``, forward, loss, ``backward``, ``step``.
``raw-full``        the hand-written loop doing by hand what the standard callback set does: sample-weighted
                    epoch losses, the metric on training and validation batches, a validation pass under
                    ``inference_mode``, TensorBoard scalars (the training loss every 50 steps, the results per
                    epoch), an early-stopping check and an atomic, fsynced checkpoint file per epoch (as
                    ``ModelCheckpoint`` writes them).
``trainer``         ``Trainer(enable_progress_bar=False)`` and no model summary nor console lines, no callbacks, no validation, no metrics; an
                    ``Aggregate`` with the default learner step (``self.nn``, ``self.criterion``,
                    ``self.optimizer``).
``trainer-std``     the Trainer with the standard set: ``EarlyStopping``, ``ModelCheckpoint`` (every epoch,
                    all kept), ``TensorBoardLogger`` (default ``log_every_n_steps=50``), the metric, and the
                    validation loader.
``raw-loggers``     the hand-written loop doing by hand what ``Aggregate.log`` of two values per step,
                    ``TensorBoardLogger`` and ``CSVLogger`` do: per step the loss kept twice (a sample-weighted
                    mean, ``objective``, also written as a step value, and a maximum, ``peak``); every 50 steps
                    the loss and the step value read at once and written as TensorBoard scalars and a CSV row;
                    at each epoch's end the sample-weighted loss, the mean and the maximum computed on the
                    device, read at once and written to both with the epoch; the hyper-parameters written once
                    (a TensorBoard hparams summary and a YAML file), the CSV appended at each epoch's end.
``trainer-loggers`` the Trainer with ``TensorBoardLogger`` and ``CSVLogger`` (``log_every_n_steps=50``), no
                    validation, no metric; its aggregate's ``fit`` logs two values per step:
                    ``self.log("objective", loss, on_step=True)`` and ``self.log("peak", loss, reduce_fx="max")``.
``trainer-tracked`` ``trainer-std`` plus ``RunTracker`` writing the run store to a SQLite file (a new run per
                    fit; the aggregate gets an identity with ``initialize``). Measured against ``trainer-std``.
``lightning``       Lightning 2.x (``lightning`` or ``pytorch_lightning``) with logging, checkpointing, the
                    progress bar and the model summary off.
``lightning-full``  Lightning with the same standard set as ``trainer-std`` (``self.log`` of the loss and the
                    metric, ``EarlyStopping``, ``ModelCheckpoint``, ``TensorBoardLogger``, no sanity check).
==================  ===========================================================================================

The timed region starts just before the trainer is built (or the raw loop begins) and ends when ``fit``
returns: imports (TensorBoard's too), data loading and building the network are outside it, in every variant.
Each process fits twice from the same seed (``--no-warmup``: once) and reports both: the first fit as ``cold``,
the second as the measurement (see :func:`run`). Peak RSS is the process's peak resident set during the fit: the kernel's mark is reset just before the timed
region (Linux ``/proc/self/clear_refs``) and read (``VmHWM``) after it, so data loading does not set it; where
the reset is not allowed, it is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the whole run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import os
import random
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.workloads import Data, Workload, load

__all__ = ["VARIANTS", "main", "run"]

MARKER = "BENCH-RESULT "
SEED = 0
LOG_EVERY_N_STEPS = 50  # TensorBoardLogger's and Lightning's default
QUIET: dict[str, Any] = {"enable_model_summary": False, "verbose": False}  # as Lightning's variants: no summary


def _no_sanity_check(trainer_class: Any) -> dict[str, Any]:
    """``num_sanity_val_steps=0``, as Lightning's side has it, where the Trainer takes it (a candidate tree from
    before it did not)."""
    return {"num_sanity_val_steps": 0} if "num_sanity_val_steps" in inspect.signature(trainer_class).parameters else {}


def _current_rss_kib() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); ``False`` where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib() -> int:
    """The peak RSS since the last reset (``VmHWM``), else since the process started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- raw loops ------------------------------------------------------------------------------------------------


def _raw(workload: Workload, data: Data, device: torch.device, tmp: Path) -> tuple[nn.Module, Callable[[], None]]:
    torch.manual_seed(SEED)
    net = workload.network().to(device)
    criterion = workload.criterion()
    optimizer = workload.optimizer(net.parameters())

    def fit() -> None:
        net.train()
        for _ in range(workload.epochs):
            for inputs, targets in data.train:
                inputs, targets = (
                    inputs.to(device, non_blocking=True),
                    targets.to(device, non_blocking=True),
                )
                optimizer.zero_grad()
                loss = criterion(net(inputs), targets)
                loss.backward()
                optimizer.step()

    return net, fit


def _save_durably(state: dict[str, Any], path: Path) -> None:
    """What a careful hand-written loop does, and ``ModelCheckpoint`` does: write a temporary file, fsync it,
    rename it into place, fsync the folder (so a crash leaves the old file or the new one, never half of one)."""
    partial = path.with_name(f".{path.name}.tmp")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _raw_full(workload: Workload, data: Data, device: torch.device, tmp: Path) -> tuple[nn.Module, Callable[[], None]]:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(SEED)
    net = workload.network().to(device)
    criterion = workload.criterion()
    optimizer = workload.optimizer(net.parameters())
    train_metric, val_metric = (
        workload.metric().to(device),
        workload.metric().to(device),
    )
    name = workload.metric_name
    patience = workload.epochs + 1  # never stops: every variant runs every epoch

    def mean_loss(losses: list[torch.Tensor], sizes: list[int]) -> float:
        stacked = torch.stack(losses).float()
        return float(torch.dot(stacked, torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device))) / sum(sizes)

    def fit() -> None:
        writer = SummaryWriter(log_dir=str(tmp / "tensorboard" / "version_0"))
        (tmp / "checkpoints").mkdir(parents=True, exist_ok=True)
        best, wait, step = float("inf"), 0, 0
        for epoch in range(workload.epochs):
            net.train()
            train_metric.reset()
            losses: list[torch.Tensor] = []
            sizes: list[int] = []
            for inputs, targets in data.train:
                inputs, targets = (
                    inputs.to(device, non_blocking=True),
                    targets.to(device, non_blocking=True),
                )
                optimizer.zero_grad()
                outputs = net(inputs)
                loss = criterion(outputs, targets)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                sizes.append(inputs.shape[0])
                train_metric.update(outputs, targets)
                step += 1
                if step % LOG_EVERY_N_STEPS == 0:
                    writer.add_scalar("train/loss_step", float(loss.detach()), step)
            results = {
                "train/loss": mean_loss(losses, sizes),
                f"train/{name}": float(train_metric.compute()),
            }
            net.eval()
            val_metric.reset()
            losses, sizes = [], []
            with torch.inference_mode():
                for inputs, targets in data.validation:
                    inputs, targets = (
                        inputs.to(device, non_blocking=True),
                        targets.to(device, non_blocking=True),
                    )
                    outputs = net(inputs)
                    losses.append(criterion(outputs, targets))
                    sizes.append(inputs.shape[0])
                    val_metric.update(outputs, targets)
            results.update(
                {
                    "validation/loss": mean_loss(losses, sizes),
                    f"validation/{name}": float(val_metric.compute()),
                }
            )
            for key, value in results.items():
                writer.add_scalar(key, value, step)
            writer.add_scalar("epoch", epoch, step)
            writer.flush()
            if results["validation/loss"] < best:
                best, wait = results["validation/loss"], 0
            else:
                wait += 1
            state = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "progress": {"epoch": epoch + 1, "step": step},
                "early_stopping": {"best": best, "wait": wait},
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            }
            _save_durably(state, tmp / "checkpoints" / f"epoch={epoch}-step={step}.ckpt")
            if wait >= patience:
                break
        writer.close()

    return net, fit


def _raw_loggers(
    workload: Workload, data: Data, device: torch.device, tmp: Path
) -> tuple[nn.Module, Callable[[], None]]:
    import csv

    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    torch.manual_seed(SEED)
    net = workload.network().to(device)
    criterion = workload.criterion()
    optimizer = workload.optimizer(net.parameters())
    settings = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    params = {f"optimizer/{key}": value if isinstance(value, (int, float, str)) else str(value)
              for key, value in settings.items()}

    def fit() -> None:
        writer = SummaryWriter(log_dir=str(tmp / "tensorboard" / "version_0"))
        _, start, _ = hparams(params, {})
        writer.file_writer.add_summary(start)
        folder = tmp / "csv" / "version_0"
        folder.mkdir(parents=True)
        (folder / "hparams.yaml").write_text("".join(f"{key}: {value}\n" for key, value in params.items()))
        columns = ["step", "epoch", "train/loss_step", "train/objective_step", "train/loss", "train/objective",
                   "train/peak"]
        with open(folder / "metrics.csv", "w", newline="") as file:
            csv.DictWriter(file, columns).writeheader()
        step, rows = 0, []
        net.train()
        for epoch in range(workload.epochs):
            losses: list[torch.Tensor] = []
            objectives: list[torch.Tensor] = []  # what self.log("objective", ...) and ("peak", ...) keep
            sizes: list[int] = []
            for inputs, targets in data.train:
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                optimizer.zero_grad()
                loss = criterion(net(inputs), targets)
                loss.backward()
                optimizer.step()
                loss = loss.detach()
                losses.append(loss)
                objectives.append(loss)
                sizes.append(inputs.shape[0])
                step += 1
                if step % LOG_EVERY_N_STEPS == 0:
                    value, objective = torch.stack([loss, objective_of(loss)]).tolist()
                    writer.add_scalar("train/loss_step", value, step)
                    writer.add_scalar("train/objective_step", objective, step)
                    rows.append({"step": step, "train/loss_step": value, "train/objective_step": objective})
            stacked = torch.stack(losses).float()
            kept = torch.stack(objectives).float()
            sizes_tensor = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
            loss_sum, objective_sum, peak = torch.stack(
                [torch.dot(stacked, sizes_tensor), torch.dot(kept, sizes_tensor), kept.max()]
            ).tolist()
            results = {"train/loss": loss_sum / sum(sizes), "train/objective": objective_sum / sum(sizes),
                       "train/peak": peak}
            for key, value in results.items():
                writer.add_scalar(key, value, step)
            writer.add_scalar("epoch", epoch, step)
            writer.flush()
            rows.append({"step": step, "epoch": epoch, **results})
            with open(folder / "metrics.csv", "a", newline="") as file:
                csv.DictWriter(file, columns).writerows(rows)
            rows = []
        writer.close()

    return net, fit


# -- the Trainer ----------------------------------------------------------------------------------------------


def objective_of(loss: torch.Tensor) -> torch.Tensor:
    """The value both logging variants log per step (the loss itself: logging adds no arithmetic to the step)."""
    return loss


def _aggregate(workload: Workload, device: torch.device, logs: bool = False) -> Any:
    from torchsystem_trainer import Aggregate

    class Model(Aggregate):
        """The benchmark's aggregate: the network, its criterion and optimizer; the default learner step."""

        def __init__(self, net: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
            super().__init__()
            self.nn = net
            self.criterion = criterion
            self.optimizer = optimizer

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.nn(inputs)  # type: ignore[no-any-return]

    class Logging(Model):
        """The same, logging two values per step (``Aggregate.log``)."""

        def fit(self, inputs: Any, targets: Any) -> tuple[Any, torch.Tensor]:
            outputs, loss = super().fit(inputs, targets)
            self.log("objective", objective_of(loss), on_step=True)
            self.log("peak", loss, reduce_fx="max")
            return outputs, loss

    torch.manual_seed(SEED)
    net = workload.network().to(device)
    return (Logging if logs else Model)(net, workload.criterion(), workload.optimizer(net.parameters()))


def _trainer(workload: Workload, data: Data, device: torch.device, tmp: Path) -> tuple[nn.Module, Callable[[], None]]:
    from torchsystem_trainer import Trainer

    model = _aggregate(workload, device)

    def fit() -> None:
        trainer = Trainer(
            max_epochs=workload.epochs, enable_progress_bar=False, strategy=device.type, **QUIET,
        )
        trainer.fit(model, [("train", data.train)])

    return model.nn, fit


def _trainer_std(
    workload: Workload, data: Data, device: torch.device, tmp: Path, tracked: bool = False
) -> tuple[nn.Module, Callable[[], None]]:
    import torch.utils.tensorboard  # noqa: F401  # imported outside the timed region, as for raw-full

    from torchsystem_trainer import Trainer
    from torchsystem_trainer.callbacks.early_stopping import EarlyStopping
    from torchsystem_trainer.callbacks.model_checkpoint import ModelCheckpoint
    from torchsystem_trainer.callbacks.tensorboard import TensorBoardLogger

    if tracked:
        from torchsystem_trainer.tracking import RunTracker  # imported outside the timed region too
    model = _aggregate(workload, device)
    if tracked:
        model.initialize(f"benchmark-{workload.name}")  # the store's key
    metric = workload.metric()

    def fit() -> None:
        tracking = [RunTracker(f"sqlite:///{tmp / 'runs.db'}")] if tracked else []
        trainer = Trainer(
            callbacks=[
                EarlyStopping(monitor="validation/loss", patience=workload.epochs + 1),
                ModelCheckpoint(dirpath=tmp / "checkpoints", save_top_k=-1),
                TensorBoardLogger(save_dir=tmp / "tensorboard", log_every_n_steps=LOG_EVERY_N_STEPS),
                *tracking,
            ],
            metrics={workload.metric_name: metric},
            max_epochs=workload.epochs,
            enable_progress_bar=False,
            strategy=device.type,
            default_root_dir=tmp,
            **QUIET,
            **_no_sanity_check(Trainer),
        )
        trainer.fit(model, [("train", data.train), ("validation", data.validation)])

    return model.nn, fit


def _trainer_loggers(
    workload: Workload, data: Data, device: torch.device, tmp: Path
) -> tuple[nn.Module, Callable[[], None]]:
    import torch.utils.tensorboard  # noqa: F401  # imported outside the timed region, as for raw-loggers

    from torchsystem_trainer import Trainer
    from torchsystem_trainer.callbacks import CSVLogger, TensorBoardLogger

    model = _aggregate(workload, device, logs=True)

    def fit() -> None:
        trainer = Trainer(
            callbacks=[
                TensorBoardLogger(save_dir=tmp / "tensorboard", log_every_n_steps=LOG_EVERY_N_STEPS),
                CSVLogger(save_dir=tmp / "csv", log_every_n_steps=LOG_EVERY_N_STEPS),
            ],
            max_epochs=workload.epochs,
            enable_progress_bar=False,
            strategy=device.type,
            default_root_dir=tmp,
            **QUIET,
        )
        trainer.fit(model, [("train", data.train)])

    return model.nn, fit


def _trainer_tracked(
    workload: Workload, data: Data, device: torch.device, tmp: Path
) -> tuple[nn.Module, Callable[[], None]]:
    return _trainer_std(workload, data, device, tmp, tracked=True)


# -- Lightning ------------------------------------------------------------------------------------------------


def lightning_module() -> Any:
    """``lightning.pytorch`` (or ``pytorch_lightning``), or ``None`` when neither is installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _lightning_model(pl: Any, workload: Workload, full: bool) -> Any:
    class Module(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(SEED)
            self.net = workload.network()
            self.criterion = workload.criterion()
            if full:
                self.train_metric, self.val_metric = (
                    workload.metric(),
                    workload.metric(),
                )

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.net(inputs)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            outputs = self.net(inputs)
            loss = self.criterion(outputs, targets)
            if full:
                self.train_metric.update(outputs, targets)
                self.log("train_loss", loss, on_step=True, on_epoch=True)
                self.log(
                    f"train_{workload.metric_name}",
                    self.train_metric,
                    on_step=False,
                    on_epoch=True,
                )
            return loss  # type: ignore[no-any-return]

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            inputs, targets = batch
            outputs = self.net(inputs)
            self.val_metric.update(outputs, targets)
            self.log(
                "val_loss",
                self.criterion(outputs, targets),
                on_step=False,
                on_epoch=True,
            )
            self.log(
                f"val_{workload.metric_name}",
                self.val_metric,
                on_step=False,
                on_epoch=True,
            )

        def configure_optimizers(self) -> Any:
            return workload.optimizer(self.net.parameters())

    if not full:
        del Module.validation_step
    return Module()


def _lightning(
    workload: Workload, data: Data, device: torch.device, tmp: Path, full: bool = False
) -> tuple[nn.Module, Callable[[], None]]:
    pl = lightning_module()
    if pl is None:
        raise SystemExit("lightning (or pytorch_lightning) is not installed: pip install '.[bench]'")
    if full:
        import torch.utils.tensorboard  # noqa: F401  # outside the timed region, as for the others
    module = _lightning_model(pl, workload, full)
    accelerator = "gpu" if device.type == "cuda" else device.type

    def fit() -> None:
        common: dict[str, Any] = {
            "max_epochs": workload.epochs,
            "accelerator": accelerator,
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "use_distributed_sampler": False,
            "benchmark": False,
        }
        if full:
            trainer = pl.Trainer(
                callbacks=[
                    pl.callbacks.EarlyStopping(monitor="val_loss", patience=workload.epochs + 1),
                    pl.callbacks.ModelCheckpoint(dirpath=tmp / "checkpoints", save_top_k=-1),
                ],
                logger=pl.loggers.TensorBoardLogger(save_dir=tmp / "tensorboard"),
                log_every_n_steps=LOG_EVERY_N_STEPS,
                default_root_dir=tmp,
                **common,
            )
            trainer.fit(module, data.train, data.validation)
        else:
            trainer = pl.Trainer(logger=False, enable_checkpointing=False, **common)
            trainer.fit(module, data.train)

    return module.net, fit


def _lightning_full(
    workload: Workload, data: Data, device: torch.device, tmp: Path
) -> tuple[nn.Module, Callable[[], None]]:
    return _lightning(workload, data, device, tmp, full=True)


VARIANTS: dict[str, Callable[..., tuple[nn.Module, Callable[[], None]]]] = {
    "raw": _raw,
    "raw-full": _raw_full,
    "trainer": _trainer,
    "trainer-std": _trainer_std,
    "raw-loggers": _raw_loggers,
    "trainer-loggers": _trainer_loggers,
    "trainer-tracked": _trainer_tracked,
    "lightning": _lightning,
    "lightning-full": _lightning_full,
}


def run(
    workload_name: str,
    variant: str,
    *,
    quick: bool = False,
    loader: str = "tensors",
    device: str = "cpu",
    data_dir: Path | None = None,
    weights_out: Path | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Run one variant on one workload in this process and measure it.

    With ``warmup`` (the default) the variant is built and fitted twice, each time from the same seed: the first
    fit (``cold_*``) pays what only a process's first fit pays (the allocator growing, the CPU kernels' first
    calls, lazy imports, page faults: 5-25 % of a short fit, and the noisiest part of it), the second (``fit_s``,
    ``cpu_s``, the peak RSS, the weights) measures the loop itself. Lightning's parity benchmark
    (``tests/parity_pytorch``) drops its first run for the same reason.

    Args:
        workload_name: a key of :data:`benchmarks.workloads.WORKLOADS`.
        variant: a key of :data:`VARIANTS`.
        quick: the shrunken workload.
        loader: ``"tensors"`` (pre-built batches) or ``"dataloader"``.
        device: ``"cpu"`` or ``"cuda"``.
        data_dir: the MNIST folder (default: see :func:`benchmarks.workloads.mnist_dir`).
        weights_out: save the trained network's ``state_dict`` (on the CPU) here.

    Returns:
        ``fit_s`` (seconds, wall clock), ``cpu_s`` (seconds of this process's CPU time), ``cold_fit_s`` and
        ``cold_cpu_s`` (the same for the first fit; equal to them without ``warmup``), ``steps``,
        ``peak_rss_kib`` (during the fit, see the module docstring), ``rss_before_fit_kib``, and where the
        measured package came from.

    Raises:
        KeyError: for an unknown workload or variant.
    """
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    workload, data = load(workload_name, quick, loader, data_dir)  # type: ignore[arg-type]
    target = torch.device(device)
    cold: tuple[float, float] | None = None
    if warmup:  # the same build and fit, timed alike, its files and network thrown away
        with tempfile.TemporaryDirectory(prefix=f"bench-{workload_name}-{variant}-warmup-") as folder:
            _, fit = VARIANTS[variant](workload, data, target, Path(folder))
            gc.collect()
            _sync(target)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fit()
            _sync(target)
            cold = time.perf_counter() - wall0, time.process_time() - cpu0
            del fit
    with tempfile.TemporaryDirectory(prefix=f"bench-{workload_name}-{variant}-") as folder:
        net, fit = VARIANTS[variant](workload, data, target, Path(folder))
        gc.collect()
        rss_before = _current_rss_kib()
        peak_is_fits = _reset_peak_rss()
        _sync(target)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        fit()
        _sync(target)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        peak = _peak_rss_kib()
        lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if weights_out is not None:
        torch.save(
            {key: value.detach().cpu() for key, value in net.state_dict().items()},
            weights_out,
        )
    package = sys.modules.get("torchsystem_trainer")
    return {
        "workload": workload_name,
        "variant": variant,
        "fit_s": wall,
        "cpu_s": cpu,
        "cold_fit_s": wall if cold is None else cold[0],
        "cold_cpu_s": cpu if cold is None else cold[1],
        "warmup": warmup,
        "steps": workload.steps(data),
        "epochs": workload.epochs,
        "batches_per_epoch": len(data.train),
        "peak_rss_kib": peak,
        "peak_rss_is_the_fits": peak_is_fits,
        "lifetime_peak_rss_kib": lifetime_peak,
        "rss_before_fit_kib": rss_before,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if target.type == "cuda" else None,
        "data": data.source,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "package": None if package is None else str(Path(package.__file__ or "").parent),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring and ``--help``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loader", default="tensors", choices=["tensors", "dataloader"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default)",
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--trainer-path",
        type=Path,
        default=None,
        help="import torchsystem_trainer from this folder",
    )
    parser.add_argument("--weights-out", type=Path, default=None)
    parser.add_argument("--no-warmup", action="store_true", help="time the process's first fit only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trainer_path is not None:
        sys.path.insert(0, str(args.trainer_path.resolve()))
    warnings.filterwarnings("ignore")
    result = run(
        args.workload,
        args.variant,
        quick=args.quick,
        loader=args.loader,
        device=args.device,
        data_dir=args.data_dir,
        weights_out=args.weights_out,
        warmup=not args.no_warmup,
    )
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
