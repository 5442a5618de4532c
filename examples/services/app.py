"""The application layer of the services example (the seed's ``src/main.py``): bind, build, loop.

Everything decided at run time is bound here and nowhere else: the device (for the training service and the
compilation pipeline), the ``SummaryWriter`` (a generator dependency of the TensorBoard consumer), and which
consumers hear the training service's events. Then the ``Classifier`` is compiled and the epochs run through
``service.handle("iterate", ...)`` until the early-stopping subscriber's ``StopIteration``, committed by the
aggregate's ``onepoch`` when the epoch advances, or ``--epochs``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard.writer import SummaryWriter

from examples.mnist import compilation
from examples.mnist.classifier import Classifier, build_parts
from examples.mnist.loaders import make_loaders
from examples.services import earlystopping, tensorboard, training
from examples.services.metrics import Metrics
from torchsystem_trainer.callbacks.tensorboard import next_version
from torchsystem_trainer.services import Consumer

__all__ = ["ServicesResult", "main", "parse_args", "printer", "run"]

_PHASES = {"Trained": "train", "Validated": "validation", "Tested": "test"}

printer = Consumer("printer")
"""Prints each pass's metrics; registered on the training producer by :func:`run`."""


@printer.handler
def print_metrics(event: training.Trained | training.Validated | training.Tested) -> None:
    """Print ``epoch <n> <phase>: loss=... accuracy=...``.

    Args:
        event: a finished pass.
    """
    phase = _PHASES[type(event).__name__]
    values = "  ".join(f"{metric.name}={metric.value:.4f}" for metric in event.metrics)
    print(f"epoch {event.model.epoch} {phase}: {values}")


@dataclass(frozen=True, slots=True)
class ServicesResult:
    """What a run produced.

    Attributes:
        test: ``{"loss": ..., "accuracy": ...}`` on the test split.
        epochs: epochs trained.
        stopped_early: whether the early-stopping subscriber ended the training before ``--epochs``.
        log_dir: the folder of the TensorBoard event files.
    """

    test: dict[str, float]
    epochs: int
    stopped_early: bool
    log_dir: Path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The options.

    Raises:
        SystemExit: for ``--help`` or an invalid option.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.services",
        description="Train the seed's Classifier on scikit-learn's digits with services, consumers and a "
        "subscriber: the framework without the Trainer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=100, help="maximum epochs, if early stopping does not come")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's own)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="TensorBoard logs go to <runs-dir>/services/version_N")
    options = parser.parse_args(argv)
    if options.epochs < 1 or options.batch_size < 1 or (options.threads is not None and options.threads < 1):
        parser.error("--epochs, --batch-size and --threads must be ints >= 1")
    return options


def run(options: argparse.Namespace) -> ServicesResult:
    """Bind the dependencies, compile the classifier, iterate until early stopping, then test.

    Args:
        options: what :func:`parse_args` returns.

    Returns:
        The test results and how the training ended.
    """
    loaders = make_loaders("digits", options.batch_size, seed=options.seed)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    log_dir = options.runs_dir / "services" / f"version_{next_version(options.runs_dir / 'services')}"

    def device() -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    training.service.dependency_overrides[training.device] = device
    compilation.compiler.dependency_overrides[compilation.device] = device
    training.producer.register(tensorboard.consumer, earlystopping.consumer, printer)

    with SummaryWriter(log_dir=str(log_dir)) as shared_writer:

        def summary_writer() -> Iterator[SummaryWriter]:
            yield shared_writer
            shared_writer.flush()  # runs after each handler call

        tensorboard.consumer.dependency_overrides[tensorboard.writer] = summary_writer
        try:
            torch.manual_seed(options.seed)
            classifier: Classifier = compilation.compiler.compile(*build_parts(loaders.features, lr=options.lr))
            metrics = Metrics()
            phases = [("train", loaders.train), ("validation", loaders.validation)]
            stopped_early = False
            while classifier.epoch < options.epochs:
                training.service.handle("iterate", classifier, phases, metrics)
                try:
                    classifier.epoch += 1  # fires onepoch, which commits the domain events
                except StopIteration:
                    stopped_early = True
                    break
            results = training.service.handle("test", classifier, loaders.test, metrics)
        finally:  # the binding lives as long as the writer
            del tensorboard.consumer.dependency_overrides[tensorboard.writer]
    return ServicesResult(
        test={metric.name: metric.value for metric in results},
        epochs=classifier.epoch,
        stopped_early=stopped_early,
        log_dir=log_dir,
    )


def main(argv: Sequence[str] | None = None) -> ServicesResult:
    """The command line entry point: parse, run, print how it ended.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The run's :class:`ServicesResult`.

    Raises:
        SystemExit: for ``--help`` or an invalid option.
    """
    options = parse_args(argv)
    result = run(options)
    how = "early stopping" if result.stopped_early else "--epochs"
    print(f"stopped by {how} after {result.epochs} epoch(s); test accuracy {result.test['accuracy']:.2%}")
    print(f"open TensorBoard with: tensorboard --logdir {result.log_dir.parent}")
    return result
