"""The application layer of the MNIST example: command line, data, wiring of the dependencies, and the run.

``python -m examples.mnist`` trains the seed's ``Classifier`` (an MLP) with the Trainer and its callbacks::

    Trainer(callbacks=[EarlyStopping, ModelCheckpoint, TensorBoardLogger, CSVLogger, ProgressBar],
            metrics={"accuracy": Accuracy(task="multiclass", num_classes=10)}, ...)

on scikit-learn's bundled digits (the default: real data, no files, no network, well under a minute on two CPU
cores), or on MNIST / Fashion-MNIST read from their IDX files (``--data-dir``, ``--download``). The training split
loses ``--validation-fraction`` of its samples to a validation split, which early stopping and checkpointing
monitor (``validation/loss``); the test split is only used once, at the end, on the best checkpoint.

What it prints: the model summary, then a progress bar per phase when stderr is a terminal, or else one line
per epoch (``ConsoleLines``, the Trainer's default), how the fit ended and where its files went, then the test
results.

Files, in Lightning's layout, one ``version_N`` per run::

    <runs-dir>/<dataset>/<classifier id>/version_N/events.out.tfevents.*   TensorBoard
    <runs-dir>/<dataset>/<classifier id>/version_N/metrics.csv               CSV (and hparams.yaml)
    <runs-dir>/<dataset>/<classifier id>/version_N/checkpoints/*.ckpt        best and last checkpoints

    <runs-dir>/runs.db                                                       the run store (--store-url)

where ``<classifier id>`` is the registry hash of the network (same hyper-parameters, same folder).

The run store (:mod:`torchsystem_trainer.tracking`, on by default, ``--no-store`` to leave it out) records every run,
and makes a second run with the same hyper-parameters continue the same model: the compilation pipeline reads the
model's epoch from the store (the seed's ``get_current_epoch``) and its weights from the newest checkpoint the
store recorded, and the run trains ``--epochs`` more epochs (``max_epochs`` is the total the model reaches).

``--lr-find`` runs the learning-rate range test instead of training (``Tuner(trainer).lr_find``): it prints the
suggested ``--lr`` and writes the loss curve to ``<runs-dir>/<dataset>/<classifier id>/lr_find.png`` (with
matplotlib installed: ``pip install 'torchsystem-trainer[plot]'``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchmetrics import Accuracy

from examples.mnist import compilation
from examples.mnist.classifier import Classifier, build_parts
from examples.mnist.data import DATASETS
from examples.mnist.loaders import make_loaders
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import (
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    TensorBoardLogger,
)
from torchsystem_trainer.callbacks.console import format_results
from torchsystem_trainer.callbacks.log_folder import next_version
from torchsystem_trainer.checkpoint import load_aggregate_state, load_file
from torchsystem_trainer.registry import gethash
from torchsystem_trainer.strategies import PRECISIONS

__all__ = ["DEFAULTS", "LRSearch", "RunResult", "find_lr", "main", "parse_args", "run"]

if TYPE_CHECKING:
    from torchsystem_trainer.tracking import RunTracker, Tracker

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, int | None]] = {
    "digits": {"epochs": 30, "batch_size": 32, "threads": 1},
    "mnist": {"epochs": 3, "batch_size": 128, "threads": None},
    "fashion-mnist": {"epochs": 10, "batch_size": 128, "threads": None},
}
"""Per-dataset defaults of ``--epochs``, ``--batch-size`` and ``--threads`` (MNIST's are the acceptance run's).
Digits trains on one thread: its 64-256-10 network gains nothing from more, and on a busy two-core machine
OpenMP threads waiting for each other made the run three times slower (25 s against 8 s)."""

STRATEGIES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run produced.

    Attributes:
        test: the test phase's results on the best checkpoint: ``{"loss": ..., "accuracy": ...}``.
        log_dir: the run's folder (TensorBoard event files, and ``checkpoints/`` inside it).
        best_checkpoint: the checkpoint with the lowest validation loss, ``None`` if none was written.
        epochs: epochs trained by this run (fewer than asked when early stopping ended the fit).
        start_epoch: the model's epochs completed when the run started (0 for a new model; from the store).
        restored_from: the checkpoint the model's weights were restored from, ``None`` for a new model.
        run_id: the run's id in the store, ``None`` with ``--no-store``.
    """

    test: dict[str, float]
    log_dir: Path
    best_checkpoint: Path | None
    epochs: int
    start_epoch: int = 0
    restored_from: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class LRSearch:
    """What ``--lr-find`` produced.

    Attributes:
        suggestion: the suggested learning rate, ``None`` when the curve had too few points.
        plot: the PNG of the loss curve, ``None`` without matplotlib.
        results: the finder's ``{"lr": [...], "loss": [...]}``.
    """

    suggestion: float | None
    plot: Path | None
    results: dict[str, list[float]]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default, except a ``None`` one, whose help says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The options, with ``epochs`` and ``batch_size`` filled from :data:`DEFAULTS` when not given.

    Raises:
        SystemExit: for ``--help`` or an invalid option (argparse prints why).
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.mnist",
        description="Train an MLP classifier with the torchsystem-trainer Trainer on digits, MNIST or Fashion-MNIST.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="digits: scikit-learn's bundled 8x8 digits, no files needed")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of the IDX files (mnist, fashion-mnist); default ./data/<dataset>")
    parser.add_argument("--download", action="store_true", help="fetch missing IDX files (checksum-verified)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs to train in this run (a continued model trains this many more); default "
                        + ", ".join(f"{k}: {v['epochs']}" for k, v in DEFAULTS.items()))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default " + ", ".join(f"{k}: {v['batch_size']}" for k, v in DEFAULTS.items()))
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--hidden-size", type=int, default=256, help="units of the MLP's hidden layer")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout of the hidden layer")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="fraction of the training split held out for validation, in (0, 1)")
    parser.add_argument("--patience", type=int, default=5,
                        help="epochs without a better validation loss before early stopping")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto", help="auto: CUDA, else MPS, else CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run; default digits: 1, others: torch's own")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the shuffling")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where logs and checkpoints go")
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True,
                        help="record runs in the run store and continue a model it knows")
    parser.add_argument("--store-url", default=None,
                        help="SQLAlchemy URL of the run store; default sqlite:///<runs-dir>/runs.db")
    parser.add_argument("--experiment", default=None, help="the experiment's name in the store; default the dataset")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=None,
                        help="draw tqdm progress bars (default: when stderr is a terminal)")
    parser.add_argument("--profiler", choices=["simple", "pytorch"], default=None,
                        help="print where the fit's time went (pytorch: also a torch.profiler trace in "
                             "<runs-dir>/profiler)")
    parser.add_argument("--lr-find", action="store_true",
                        help="instead of training, run the learning-rate range test: print the suggested --lr and "
                             "plot the loss curve")
    options = parser.parse_args(argv)
    defaults = DEFAULTS[options.dataset]
    options.epochs = defaults["epochs"] if options.epochs is None else options.epochs
    options.batch_size = defaults["batch_size"] if options.batch_size is None else options.batch_size
    options.threads = defaults["threads"] if options.threads is None else options.threads
    if options.progress_bar is None:
        options.progress_bar = sys.stderr.isatty()
    if options.data_dir is None:
        options.data_dir = Path("data") / options.dataset
    for name in ("epochs", "batch_size", "hidden_size", "threads"):
        value = getattr(options, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} is invalid; valid: an int >= 1")
    if not 0.0 < options.validation_fraction < 1.0:
        parser.error(f"--validation-fraction={options.validation_fraction} is invalid; valid: a float in (0, 1)")
    return options


def run(options: argparse.Namespace) -> RunResult:
    """Train, keep the best checkpoint, and test it.

    Args:
        options: what :func:`parse_args` returns.

    Returns:
        The test results and where the files are.

    Raises:
        FileNotFoundError: for MNIST or Fashion-MNIST without their IDX files and without ``--download``.
        RuntimeError: for a ``--strategy`` whose device this machine does not have.
    """
    loaders = make_loaders(
        options.dataset, options.batch_size, options.validation_fraction, options.seed, options.data_dir,
        options.download,
    )
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    parts = build_parts(loaders.features, options.hidden_size, 10, options.lr, options.dropout)
    tracker, store = _open_store(options)
    identity = gethash(parts[0])  # the classifier's id: same hyper-parameters, same folder
    experiment = options.runs_dir / options.dataset / identity
    version = next_version(experiment)
    log_dir = experiment / f"version_{version}"

    checkpoint = ModelCheckpoint(
        dirpath=log_dir / "checkpoints",
        filename="epoch={epoch}-val_loss={validation/loss:.4f}",
        monitor="validation/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    trainer = Trainer(
        callbacks=[
            EarlyStopping(monitor="validation/loss", mode="min", patience=options.patience),
            checkpoint,
            TensorBoardLogger(save_dir=options.runs_dir / options.dataset, name=identity, version=version),
            CSVLogger(save_dir=options.runs_dir / options.dataset, name=identity, version=version),
            ProgressBar(refresh_rate=1 if options.progress_bar else 0),
            *([] if tracker is None else [tracker]),
        ],
        strategy=options.strategy,
        precision=options.precision,
        max_epochs=options.epochs,
        metrics={"accuracy": Accuracy(task="multiclass", num_classes=10)},
        default_root_dir=options.runs_dir,
        seed=options.seed,
        profiler=options.profiler,
    )
    compilation.compiler.dependency_overrides[compilation.device] = lambda: str(trainer.strategy.root_device)
    compilation.compiler.dependency_overrides[compilation.compile_enabled] = lambda: bool(options.compile)
    compilation.compiler.dependency_overrides[compilation.store] = lambda: store
    try:
        classifier: Classifier = compilation.compiler.compile(*parts)
    finally:
        if store is not None:
            store.close()
    start = int(classifier.epoch)
    # max_epochs is the total the model reaches (the aggregate's epoch is the truth): this run trains --epochs more
    trainer.max_epochs = start + options.epochs
    if start:
        weights = classifier.restored_from or "a new initialization: no checkpoint found"
        print(f"continuing model {classifier.id} from epoch {start} (weights of {weights}): "
              f"training epochs {start} to {start + options.epochs - 1}")
    elif tracker is not None:
        print(f"new model {classifier.id}: training epochs 0 to {options.epochs - 1}")

    trainer.fit(classifier, [("train", loaders.train), ("validation", loaders.validation)])
    epochs = int(classifier.epoch) - start
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is not None:
        state = load_file(best, map_location=trainer.strategy.root_device)
        load_aggregate_state(classifier, state["aggregate"], str(best))
    test = trainer.test(classifier, loaders.test)
    return RunResult(test=test, log_dir=log_dir, best_checkpoint=best, epochs=epochs, start_epoch=start,
                     restored_from=classifier.restored_from, run_id=None if tracker is None else tracker.run_id)


def _open_store(options: argparse.Namespace) -> tuple[RunTracker | None, Tracker | None]:
    """The store's writer (a callback) and reader (for the compilation pipeline), or ``(None, None)``."""
    if not options.store:
        return None, None
    from torchsystem_trainer.tracking import RunTracker, Tracker, default_url

    url = options.store_url or default_url(options.runs_dir)
    tracker = RunTracker(url, experiment=options.experiment or options.dataset)  # creates the store when new
    return tracker, Tracker(url)


def find_lr(options: argparse.Namespace) -> LRSearch:
    """Run the learning-rate range test on the training split (``Tuner(trainer).lr_find``, 100 steps from 1e-6 to
    1), leaving the classifier as it was, and plot its curve next to the run folders.

    Args:
        options: what :func:`parse_args` returns.

    Returns:
        The suggestion, the plot's path and the curve.

    Raises:
        FileNotFoundError, RuntimeError: as :func:`run`.
    """
    from torchsystem_trainer.tuner import Tuner

    loaders = make_loaders(
        options.dataset, options.batch_size, options.validation_fraction, options.seed, options.data_dir,
        options.download,
    )
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    parts = build_parts(loaders.features, options.hidden_size, 10, options.lr, options.dropout)
    trainer = Trainer(strategy=options.strategy, precision=options.precision, enable_progress_bar=False,
                      default_root_dir=options.runs_dir, seed=options.seed)
    compilation.compiler.dependency_overrides[compilation.device] = lambda: str(trainer.strategy.root_device)
    compilation.compiler.dependency_overrides[compilation.compile_enabled] = lambda: bool(options.compile)
    classifier: Classifier = compilation.compiler.compile(*parts)
    finder = Tuner(trainer).lr_find(classifier, [("train", loaders.train)], min_lr=1e-6, max_lr=1.0)
    plot: Path | None = options.runs_dir / options.dataset / gethash(parts[0]) / "lr_find.png"
    try:
        finder.plot(plot)  # type: ignore[arg-type]
    except ModuleNotFoundError:
        plot = None
    return LRSearch(suggestion=finder.suggestion(), plot=plot, results=finder.results)


def main(argv: Sequence[str] | None = None) -> RunResult | LRSearch:
    """The command line entry point: parse, run, print the test results and how to open TensorBoard.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The run's :class:`RunResult`; with ``--lr-find``, the :class:`LRSearch`.

    Raises:
        SystemExit: for ``--help`` or an invalid option.
        FileNotFoundError, RuntimeError: as :func:`run`.
    """
    options = parse_args(argv)
    if options.lr_find:
        search = find_lr(options)
        shown = "none (too few points)" if search.suggestion is None else f"{search.suggestion:.3g}"
        print(f"suggested learning rate: {shown} (train with --lr {shown})" if search.suggestion is not None
              else f"suggested learning rate: {shown}")
        print(f"loss curve: {search.plot}" if search.plot is not None
              else "loss curve not plotted: pip install 'torchsystem-trainer[plot]'")
        return search
    result = run(options)
    source = f"best checkpoint {result.best_checkpoint.name}" if result.best_checkpoint else "last weights"
    print(f"test ({source}): " + format_results(result.test))
    print(f"test accuracy: {result.test['accuracy']:.2%} after {result.epochs} epoch(s) on {options.dataset}"
          + (f" (model at epoch {result.start_epoch + result.epochs})" if result.start_epoch else ""))
    if result.run_id is not None:
        url = options.store_url or f"sqlite:///{(options.runs_dir / 'runs.db').as_posix()}"
        print(f"run {result.run_id[:8]} recorded; see it with: python -m torchsystem_trainer.tracking --url {url} runs")
    print(f"logs and checkpoints: {result.log_dir}")
    print(f"open TensorBoard with: tensorboard --logdir {options.runs_dir / options.dataset}")
    return result
