"""The Trainer: owns the epoch -> phase -> batch loop and produces events; decides nothing else.

Devices, precision and processes belong to the :class:`~torchsystem_trainer.strategies.Strategy`; logging,
checkpointing and stopping rules belong to callbacks, which are consumers of the events in
:mod:`torchsystem_trainer.events`. Argument names and meanings follow Lightning's ``Trainer`` where they match.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.nn import Module

from torchsystem_trainer.checkpoint import StopSignals, TrainPosition
from torchsystem_trainer.events import (
    EndReason,
    EpochStarted,
    ExceptionRaised,
    FitEnded,
    FitStarted,
    GradientsComputed,
    Iterated,
    Stage,
    StageEnded,
    StageEndReason,
    StageStarted,
    Trained,
)
from torchsystem_trainer.services import Consumer
from torchsystem_trainer.strategies import CLIP_ALGORITHMS, Strategy, resolve_strategy
from torchsystem_trainer.trainer import arguments as check
from torchsystem_trainer.trainer.dispatch import EventBus
from torchsystem_trainer.trainer.loaders import normalize_loaders
from torchsystem_trainer.trainer.phases import evaluate_phase, predict_phase, train_phase
from torchsystem_trainer.trainer.progress import Progress
from torchsystem_trainer.trainer.results import PhaseResults, build_metrics
from torchsystem_trainer.trainer.seeding import deterministic_algorithms, seed_everything

__all__ = ["Trainer"]

_R = TypeVar("_R")


class Trainer:
    """Trains, validates, tests and predicts with an aggregate, producing events for its callbacks.

    With no limit at all (``max_epochs``, ``max_steps``, ``max_time`` all ``None``) a fit runs one epoch, as
    Keras' ``epochs=1``; with only ``max_steps`` or ``max_time``, epochs repeat until that limit.

    Args:
        callbacks: consumers of the events (``None``: none), dispatched in list order, except that checkpoint callbacks
            (``ModelCheckpoint``) run after all others: ``Callback`` subclasses, or any ``Consumer`` (seed style,
            handlers with ``Depends``). Checked here: a ``Callback`` method that looks
            like a hook (``on_...``) but matches no event raises.
        strategy: a :class:`Strategy`, or ``"auto"`` (CUDA if present, else MPS, else CPU), ``"cpu"``,
            ``"cuda"``, ``"mps"``, ``"ddp"``.
        max_epochs: stop after this many epochs (>= 0).
        max_steps: stop after this many optimizer steps (>= 0); with gradient accumulation a step spans
            ``accumulate_grad_batches`` batches.
        max_time: stop after this wall-clock time, checked after every training batch: seconds, a
            ``timedelta``, or ``"DD:HH:MM:SS"``.
        metrics: a torchmetrics ``Metric``, ``MetricCollection`` or ``{name: Metric}``; cloned per phase,
            updated on the device with ``(predictions, targets)``, computed and reset at each phase's end.
        accumulate_grad_batches: batches per optimizer step (>= 1); the step uses the mean gradient.
        gradient_clip_val: clip gradients to this 2-norm (or absolute value), after unscaling; ``None``: no clip.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        check_val_every_n_epoch: run the validation phase on every n-th epoch (>= 1).
        limit_train_batches, limit_val_batches: run at most this many batches per epoch (an ``int``), or this
            fraction of the loader (a ``float`` in ``[0, 1]``).
        fast_dev_run: ``True`` (or n): one epoch of 1 (or n) training and validation batches, to smoke-test a
            set-up; ``ModelCheckpoint`` and the loggers write nothing then.
        enable_progress_bar: add a ``ProgressBar``; ``None`` means when stderr (where it draws) is a terminal.
        enable_model_summary: add a ``ModelSummary`` (a table of the aggregate's modules at each fit's start).
        verbose: add ``ConsoleLines``: a line per epoch when no progress bar draws, and lines for how a fit
            resumes and ends and where its files went (on stderr); ``False`` prints none of them.
        default_root_dir: where callbacks put files when not told otherwise (default ``./runs``).
        seed: seed Python, NumPy and torch at the start of every ``fit`` (see ``seed_everything``).
        deterministic: use deterministic algorithms during ``fit`` (``torch.use_deterministic_algorithms``).
        precision: the precision of a strategy given by name: ``"32-true"`` (default), ``"64-true"``,
            ``"bf16-mixed"``, ``"16-mixed"``.

    Raises:
        ValueError: for an invalid value, naming the argument, the value and what is valid.
        TypeError: for a callback that is not a consumer (or a callback class instead of an instance), an argument
            of the wrong type, or a keyword this Trainer does not take (for a Lightning keyword such as
            ``accelerator`` or ``logger``, the message says what to write here instead).
    """

    def __init__(
        self,
        callbacks: Sequence[Consumer] | None = (),
        strategy: str | Strategy = "auto",
        max_epochs: int | None = None,
        max_steps: int | None = None,
        max_time: float | timedelta | str | None = None,
        metrics: Any = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        check_val_every_n_epoch: int = 1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        fast_dev_run: bool | int = False,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool = True,
        verbose: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        deterministic: bool = False,
        precision: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            check.unknown_keywords(unknown, [name for name in inspect.signature(Trainer).parameters if name != "unknown"])
        self.max_epochs = check.non_negative_int("max_epochs", max_epochs)
        self.max_steps = check.non_negative_int("max_steps", max_steps)
        self.max_time = check.seconds("max_time", max_time)
        self.accumulate_grad_batches = check.positive_int("accumulate_grad_batches", accumulate_grad_batches)
        self.gradient_clip_val = check.non_negative_float("gradient_clip_val", gradient_clip_val)
        self.gradient_clip_algorithm = check.choice("gradient_clip_algorithm", gradient_clip_algorithm, CLIP_ALGORITHMS)
        self.check_val_every_n_epoch = check.positive_int("check_val_every_n_epoch", check_val_every_n_epoch)
        self.limit_train_batches = check.limit("limit_train_batches", limit_train_batches)
        self.limit_val_batches = check.limit("limit_val_batches", limit_val_batches)
        fast = check.fast_dev_run(fast_dev_run)
        self.fast_dev_run: int = fast
        if fast:
            self.max_epochs, self.max_steps, self.max_time = 1, None, None
            self.limit_train_batches = self.limit_val_batches = fast
        elif self.max_epochs is None and self.max_steps is None and self.max_time is None:
            self.max_epochs = 1
        self.seed = None if seed is None else check.non_negative_int("seed", seed)
        self.deterministic = bool(deterministic)
        self.default_root_dir = Path(default_root_dir) if default_root_dir is not None else Path("runs")
        self.metrics = build_metrics(metrics)
        self.strategy: Strategy = resolve_strategy(strategy, precision)
        callbacks = self._with_progress_bar(list(callbacks or ()), enable_progress_bar)
        from torchsystem_trainer.callbacks import ConsoleLines, ModelSummary  # upward, as for the default bar

        callbacks = _with_default(
            callbacks, ModelSummary, "is_model_summary", enable_model_summary, "enable_model_summary"
        )
        callbacks = _with_default(callbacks, ConsoleLines, "is_console_lines", verbose, "verbose")
        # Checkpoint callbacks run last, so the state they save includes every other callback's update of the
        # same event (Lightning does the same; its issue #1464); only callbacks that report on them (ConsoleLines)
        # run after them.
        self.callbacks: list[Consumer] = sorted(
            callbacks,
            key=lambda c: (
                bool(getattr(c, "runs_after_checkpoints", False)),
                callable(getattr(c, "checkpoint_path", None)),
            ),
        )
        self._subscriptions = check.subscriptions(self.callbacks)

        self.progress = Progress()
        self.should_stop = False
        self.interrupted = False
        self.received_signal: int | None = None
        self.ckpt_path: Path | None = None  # the checkpoint the last fit resumed from (Lightning's ckpt_path)
        self.callback_metrics: dict[str, float] = {}
        self._bus = EventBus([], [])
        self._phase_results: dict[str, PhaseResults] = {}
        self._loaders: dict[str, Iterable[Any]] = {}
        self._position = TrainPosition()  # the training loader's epoch start, for exact mid-epoch resumes
        self._signal_set_stop = False  # should_stop was set by SIGTERM/SIGINT (not saved in checkpoints)

    # -- Lightning-style read-only views ----------------------------------------------------------------

    @property
    def current_epoch(self) -> int:
        """0-based index of the epoch running now (``progress.epoch``)."""
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps since the run began (``progress.global_step``)."""
        return self.progress.global_step

    @property
    def train_dataloader(self) -> Iterable[Any] | None:
        """The training loader of the fit running now, as the strategy prepared it (Lightning's name); ``None``
        outside a fit."""
        return self._loaders.get("train")

    @property
    def is_global_zero(self) -> bool:
        """Whether this process has global rank 0 (the strategy's)."""
        return self.strategy.is_global_zero

    @property
    def world_size(self) -> int:
        """Number of processes sharing the work (the strategy's)."""
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        """0-based rank of this process (the strategy's)."""
        return self.strategy.global_rank

    # -- public API -------------------------------------------------------------------------------------

    def fit(self, aggregate: Module, loaders: Any, *, ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train ``aggregate`` on the ``"train"`` loader, validating on the ``"validation"`` loader if given.

        ``loaders``: ``[("train", dl), ("validation", dl)]`` as in the seed, ``{"train": dl, ...}``, or one
        loader (training only). A batch is ``(inputs, targets)`` (``aggregate.fit(inputs, targets)``), another
        tuple or list (``fit(*batch)``) or a dict (``fit(**batch)``); ``fit``/``evaluate`` return
        ``(predictions, loss)``. Every call is a new run: the counters (``trainer.progress``) start from zero,
        unless ``ckpt_path`` restores them. Events, in order (handlers run in callback-list order)::

            FitStarted
            for epoch in epochs:                              # until a limit or a stop
                EpochStarted(epoch)
                PhaseStarted("train")
                for batch in train_loader:                    # aggregate in 'train' phase, under autocast
                    aggregate.fit(*batch)                     #   GradientsComputed before each optimizer step
                    BatchTrained(epoch, batch, step)
                Trained(results)
                if validation is due:                         # every check_val_every_n_epoch epochs
                    PhaseStarted("validation")
                    for batch in validation_loader:           # 'evaluation' phase, torch.inference_mode()
                        aggregate.evaluate(*batch)
                        BatchValidated(epoch, batch, step)
                    Validated(results)
                aggregate.epoch += 1                          # fires onepoch; a committed StopIteration stops
                Iterated(results as "<phase>/<name>")
            FitEnded(reason)                                  # always last; see the events module's table

        Resumed from a checkpoint written in the middle of epoch ``e`` after ``k`` training batches, the same
        sequence starts with ``FitStarted``, ``EpochStarted(e)``, ``PhaseStarted("train")`` (read
        ``trainer.progress.batch == k`` there), then ``BatchTrained`` from batch ``k``: the batches trained
        before the checkpoint are neither loaded nor seen again, and the epoch's results include them.

        ``SIGTERM`` and ``SIGINT`` (Ctrl-C) received during ``fit`` (in the main thread) stop it after the current
        training step: ``FitEnded("interrupted")``, ``ModelCheckpoint`` writes a checkpoint, ``fit`` returns with
        ``trainer.interrupted`` and ``trainer.received_signal`` set; a second ``SIGINT`` raises
        ``KeyboardInterrupt`` at once. See ``docs/resuming.md``.

        Args:
            aggregate: an ``Aggregate`` (or any module with ``fit`` and ``evaluate`` methods).
            loaders: the loaders, as above.
            ckpt_path: resume from this checkpoint file, or ``"last"``/``"best"`` (the ``ModelCheckpoint``
                callback's newest complete / best file; ``"last"`` with none yet starts from scratch, so the same
                command starts and resumes a run). Resuming is exact: the weights end bit-identical to the
                uninterrupted run's (see ``docs/resuming.md`` for what that needs).

        Raises:
            ValueError: for loaders without a ``"train"`` phase or with a phase ``fit`` does not run.
            TypeError: for an aggregate without ``fit``/``evaluate``, or a bad batch or return value.
            FileNotFoundError, CheckpointError: for a ``ckpt_path`` that is missing, corrupt, unsafe, foreign or
                does not match the aggregate (naming the file), before any event; nothing is changed then.
            TypeError, ValueError: for a loader the strategy refuses (``process_dataloader``, e.g. DDP's), before
                any event; the strategy is torn down.
            Exception: whatever the aggregate, a loader or a callback raises, after ``ExceptionRaised`` and
                ``FitEnded``; ``KeyboardInterrupt`` instead ends the fit cleanly (``trainer.interrupted``),
                except a second ``SIGINT`` while stopping, which propagates.
        """
        check.aggregate(aggregate, ("fit", "evaluate"), "fit")
        pairs = normalize_loaders(loaders, ("train", "validation"), "fit")
        if "train" not in dict(pairs):
            raise ValueError("Trainer.fit: loaders has no 'train' loader; give [('train', loader), ...]")
        self.strategy.launch(self._fit, aggregate, pairs, ckpt_path)

    def validate(
        self, aggregate: Module, loaders: Any, *, ckpt_path: str | os.PathLike[str] | None = None
    ) -> dict[str, float]:
        """Run one validation phase outside a fit. Events, in order (Lightning's ``on_validation_start``, ...,
        ``on_validation_end``)::

            StageStarted("validate")
            PhaseStarted("validation")
            for batch in loader:                              # 'evaluation' phase, torch.inference_mode()
                aggregate.evaluate(*batch)
                BatchValidated(epoch, batch, step)
            Validated(results)
            StageEnded("validate", reason)                    # always last; see the events module's table

        Args:
            aggregate: the aggregate, with an ``evaluate`` method.
            loaders: one loader, ``[("validation", loader)]`` or ``{"validation": loader}``.
            ckpt_path: first load the aggregate's state (weights, optimizers, epoch) from this checkpoint file,
                or from the ``ModelCheckpoint``'s ``"best"``/``"last"`` one (Lightning's ``ckpt_path``).

        Returns:
            The results: ``{"loss": ..., <metric>: ...}``.

        Raises:
            ValueError, TypeError: as for :meth:`fit`; ``ValueError`` also for ``"best"``/``"last"`` when there
                is no such checkpoint.
            FileNotFoundError, CheckpointError: for a checkpoint that is missing, unsafe or does not match, before
                any event.
            Exception: whatever the aggregate, a loader or a callback raises, after ``ExceptionRaised`` and
                ``StageEnded("validate", "exception")``; a ``KeyboardInterrupt`` after ``ExceptionRaised`` and
                ``StageEnded("validate", "interrupted")``.
        """
        return self._evaluate_only(aggregate, loaders, "validation", ckpt_path)

    def test(
        self, aggregate: Module, loaders: Any, *, ckpt_path: str | os.PathLike[str] | None = None
    ) -> dict[str, float]:
        """Run one test phase: ``StageStarted("test")``, ``PhaseStarted("test")``, ``BatchTested``...,
        ``Tested``, ``StageEnded("test", reason)`` (Lightning's ``on_test_start``, ..., ``on_test_end``); see
        :meth:`validate`.

        Returns:
            The results: ``{"loss": ..., <metric>: ...}``.

        Raises:
            ValueError, TypeError, FileNotFoundError, CheckpointError: as for :meth:`validate`.
            Exception: as for :meth:`validate`, after ``ExceptionRaised`` and ``StageEnded("test", ...)``.
        """
        return self._evaluate_only(aggregate, loaders, "test", ckpt_path)

    def predict(self, aggregate: Module, loader: Iterable[Any]) -> list[Any]:
        """Predict every batch of ``loader`` in the ``'evaluation'`` phase under ``torch.inference_mode()``.

        Each batch goes to ``aggregate.predict(batch)`` when the aggregate has a ``predict`` method, else to its
        forward: a tensor batch as it is, a tuple or list batch's first element (the inputs). Events:
        ``StageStarted("predict")``, ``PhaseStarted("predict")``, ``BatchPredicted`` per batch, ``Predicted``,
        ``StageEnded("predict", reason)`` (Lightning's ``on_predict_start``, ..., ``on_predict_end``).

        Returns:
            One entry per batch, what ``predict``/forward returned.

        Raises:
            TypeError: for a batch that is neither a tensor, a tuple nor a list, when there is no ``predict``.
            Exception: whatever the aggregate, the loader or a callback raises, after ``ExceptionRaised`` and
                ``StageEnded("predict", "exception")``; a ``KeyboardInterrupt`` after ``ExceptionRaised`` and
                ``StageEnded("predict", "interrupted")``.
        """
        check.aggregate(aggregate, (), "predict")
        (_, loader), = normalize_loaders(loader, ("predict",), "predict")
        return self.strategy.launch(self._predict, aggregate, loader)

    def save_checkpoint(
        self, filepath: str | os.PathLike[str], weights_only: bool = False, *, aggregate: Module | None = None
    ) -> Path:
        """Write a checkpoint of ``aggregate`` and this trainer now, atomically, as ``ModelCheckpoint`` does
        (Lightning's ``Trainer.save_checkpoint``): the whole state of ``checkpoint_state`` (resumable with
        ``fit(ckpt_path=filepath)``), or with ``weights_only`` the weights alone (``weights_state``: for
        ``load_weights``/``load_model``, not for resuming). Written by the process of global rank 0 only.

        Args:
            filepath: the file; its folder is created when missing.
            weights_only: write only the weights (and the averaged weights of ``EMA``/``StochasticWeightAveraging``).
            aggregate: the aggregate to save; default the one of this trainer's latest ``fit``, ``validate``,
                ``test`` or ``predict`` in this process (a ``fit`` that started processes ran in them: pass it then).

        Returns:
            The path written.

        Raises:
            RuntimeError: when no aggregate is given and this trainer has run none in this process.
            TypeError: when some state holds a value ``weights_only`` loading would refuse (nothing is written).
            OSError: when the folder cannot be written; an existing file is then unchanged.
        """
        from torchsystem_trainer.checkpoint import checkpoint_state, save_atomic, weights_state

        target = aggregate if aggregate is not None else self.__dict__.get("_aggregate")
        if target is None:
            raise RuntimeError(
                "Trainer.save_checkpoint: aggregate=None and this trainer has run no aggregate in this process; "
                "pass aggregate="
            )
        state = weights_state(target, self.callbacks) if weights_only else checkpoint_state(self, target)
        if self.strategy.is_global_zero:
            save_atomic(state, filepath)
        return Path(filepath)

    # -- the run ----------------------------------------------------------------------------------------

    def _start(self, aggregate: Any) -> None:
        """What every entry point does first, in every process: set up the strategy and the event bus."""
        zero = self.strategy.is_global_zero
        kept = [
            (callback, table)
            for callback, table in zip(self.callbacks, self._subscriptions)
            if zero or not getattr(callback, "rank_zero_only", False)
        ]
        self._bus = EventBus([c for c, _ in kept], [t for _, t in kept])
        self.strategy.configure(
            accumulate_grad_batches=self.accumulate_grad_batches,
            gradient_clip_val=self.gradient_clip_val,
            gradient_clip_algorithm=self.gradient_clip_algorithm,  # type: ignore[arg-type]
            on_gradients=self._on_gradients if self._bus.handlers(GradientsComputed) else None,
        )
        self.strategy.setup(aggregate)
        self._aggregate = aggregate
        self._phase_results = {}

    def _results_of(self, phase: str) -> PhaseResults:
        results = self._phase_results.get(phase)
        if results is None:
            metrics = None if self.metrics is None else self.metrics.clone().to(self.strategy.root_device)
            results = self._phase_results[phase] = PhaseResults(metrics, self.strategy.root_device)
        return results

    def _on_gradients(self, optimizer: Any) -> None:
        progress = self.progress
        self._bus.emit(GradientsComputed, self, self._aggregate, progress.epoch, progress.step + 1, optimizer)

    def _fit(self, aggregate: Any, pairs: list[tuple[str, Iterable[Any]]], ckpt_path: Any) -> None:
        if self.seed is not None:
            seed_everything(self.seed)
        self.should_stop = self.interrupted = self._signal_set_stop = False
        self.received_signal = self.ckpt_path = None
        self.progress = Progress()
        self.callback_metrics = {}
        self._position = TrainPosition()
        if "epoch" not in aggregate.__dict__:
            aggregate.__dict__["epoch"] = 0  # a first value, which fires no onepoch
        self._start(aggregate)
        reason: EndReason = "exception"
        bus = self._bus
        with StopSignals(self._on_stop_signal) as signals:
            try:  # whatever happens from here, the strategy is torn down (inside StopSignals, as the fit runs)
                # a loader the strategy refuses or a checkpoint that cannot be used fails the fit before it starts:
                # no event (and a bad checkpoint changes nothing); the loaders come first, restoring reads them
                loaders = [(phase, self.strategy.process_dataloader(loader, phase)) for phase, loader in pairs]
                self._loaders = dict(loaders)
                if ckpt_path is not None:
                    self._restore(aggregate, ckpt_path)
                try:
                    with deterministic_algorithms(self.deterministic):
                        bus.emit(FitStarted, self, aggregate)
                        reason = self._run_epochs(aggregate, loaders)
                    self.interrupted = reason == "interrupted"
                except KeyboardInterrupt as error:
                    reason, self.interrupted = "interrupted", True
                    bus.emit(ExceptionRaised, self, aggregate, error)
                    if signals.insisted:  # a second SIGINT while stopping: the user wants out now
                        raise
                except BaseException as error:
                    bus.emit(ExceptionRaised, self, aggregate, error)
                    raise
                finally:
                    bus.emit(FitEnded, self, aggregate, reason)
            finally:
                self.strategy.teardown(aggregate)
                # the trainer sits in reference cycles; a loader it kept would live until the cyclic GC, and a
                # persistent-workers iterator freed by that GC waits 5 s per worker to shut down
                self._loaders = {}

    def _on_stop_signal(self, signal_number: int) -> None:
        """``SIGTERM``/``SIGINT`` during ``fit``: stop after the current training step (see ``StopSignals``)."""
        self.received_signal = signal_number
        if not self.should_stop:
            self.should_stop = self._signal_set_stop = True

    def _agree_to_stop(self, deadline: float | None) -> float | None:
        """Under several processes, agree after each training batch on whether to stop, since a signal, a clock
        or a callback may tell one process and not the others: the strongest request wins everywhere (one small
        all-reduce and one host read per batch, paid only by data-parallel runs).

        Returns:
            The deadline to check next, ``0.0`` when some process's ``max_time`` ran out.
        """
        timed_out = deadline is not None and time.monotonic() >= deadline
        local = 3 if timed_out else 2 if self._signal_set_stop else 1 if self.should_stop else 0
        agreed = int(self.strategy.all_reduce(torch.tensor(local, device=self.strategy.root_device), "max").item())
        if agreed == 3:
            return 0.0
        if agreed and not self.should_stop:
            self.should_stop, self._signal_set_stop = True, agreed == 2
        return deadline

    def _stop_reason(self) -> EndReason:
        return "interrupted" if self._signal_set_stop else "stopped"

    def _run_epochs(self, aggregate: Any, loaders: list[tuple[str, Iterable[Any]]]) -> EndReason:
        progress, bus = self.progress, self._bus
        deadline = None if self.max_time is None else time.monotonic() + self.max_time
        reason: EndReason | None = None
        if self.should_stop:  # restored from a checkpoint written as the fit was stopping, or a signal came
            return self._stop_reason()
        if self.max_steps is not None and self.max_steps <= progress.global_step:  # 0, or restored at its limit
            return "max_steps"
        while self.max_epochs is None or progress.epoch < self.max_epochs:
            epoch = progress.epoch
            bus.emit(EpochStarted, self, aggregate, epoch)
            flat: dict[str, float] = {}
            for phase, loader in loaders:
                if phase == "train":
                    results, reason, cut_short = train_phase(self, aggregate, loader, deadline)
                    if reason == "interrupted":  # the epoch is unfinished: a resumed fit completes it
                        return reason
                    bus.emit(Trained, self, aggregate, epoch, results)
                elif cut_short or (epoch + 1) % self.check_val_every_n_epoch:
                    continue
                else:
                    results = evaluate_phase(self, aggregate, loader, phase, self.limit_val_batches)
                flat.update({f"{phase}/{name}": value for name, value in results.items()})
            self.callback_metrics = flat
            progress.epoch, progress.batch = epoch + 1, 0
            try:
                aggregate.epoch = aggregate.epoch + 1
            except StopIteration:  # the seed's early stopping: a StopIteration committed at onepoch
                reason = reason or "stopped"
                self.should_stop = True  # so a checkpoint written at Iterated records the stop
            bus.emit(Iterated, self, aggregate, epoch, flat)
            if reason is None and self.should_stop:
                reason = self._stop_reason()
            if reason is not None:
                return reason
        return "completed"

    def _evaluate_only(self, aggregate: Module, loaders: Any, phase: str, ckpt_path: Any) -> dict[str, float]:
        method = "test" if phase == "test" else "validate"
        check.aggregate(aggregate, ("evaluate",), method)
        (_, loader), = normalize_loaders(loaders, (phase,), method)
        if ckpt_path is not None:
            from torchsystem_trainer.checkpoint import load_aggregate_state, read_checkpoint, resolve_checkpoint_path

            path = resolve_checkpoint_path(self, ckpt_path)
            if path is None:
                raise ValueError(f"Trainer.{method}: ckpt_path={ckpt_path!r}, but there is no checkpoint yet")
            load_aggregate_state(aggregate, read_checkpoint(path)["aggregate"], str(path))
        return self.strategy.launch(self._run_evaluation, aggregate, loader, phase)  # a method: spawn pickles it

    def _run_evaluation(self, aggregate: Module, loader: Iterable[Any], phase: str) -> dict[str, float]:
        def run() -> dict[str, float]:
            limit = self.limit_val_batches if phase == "validation" else None
            return evaluate_phase(self, aggregate, self.strategy.process_dataloader(loader, phase), phase, limit)

        return self._run_stage(aggregate, "validate" if phase == "validation" else "test", run)

    def _predict(self, aggregate: Any, loader: Iterable[Any]) -> list[Any]:
        def run() -> list[Any]:
            return predict_phase(self, aggregate, self.strategy.process_dataloader(loader, "predict"))

        return self._run_stage(aggregate, "predict", run)

    def _run_stage(self, aggregate: Any, stage: Stage, run: Callable[[], _R]) -> _R:
        """Set up, then bracket ``run()`` with ``StageStarted`` ... ``StageEnded(reason)`` (``ExceptionRaised``
        first when it raises, and the exception propagates); the strategy is torn down last, even when a
        ``StageEnded`` handler raises."""
        self._start(aggregate)
        bus = self._bus
        reason: StageEndReason = "exception"
        try:
            try:
                bus.emit(StageStarted, self, aggregate, stage)
                result = run()
                reason = "completed"
                return result
            except KeyboardInterrupt as error:
                reason = "interrupted"
                bus.emit(ExceptionRaised, self, aggregate, error)
                raise
            except BaseException as error:
                bus.emit(ExceptionRaised, self, aggregate, error)
                raise
            finally:
                bus.emit(StageEnded, self, aggregate, stage, reason)
        finally:
            self.strategy.teardown(aggregate)

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.strategy.all_reduce(tensor, "sum") if self.strategy.world_size > 1 else tensor

    # -- persistence ------------------------------------------------------------------------------------

    def _restore(self, aggregate: Any, ckpt_path: Any) -> None:
        from torchsystem_trainer.checkpoint import resolve_checkpoint_path, restore

        path = resolve_checkpoint_path(self, ckpt_path)
        if path is not None:
            restore(self, aggregate, path)
            self.ckpt_path = path

    def _with_progress_bar(self, callbacks: list[Consumer], enabled: bool | None) -> list[Consumer]:
        has_bar = any(getattr(callback, "is_progress_bar", False) for callback in callbacks)
        if enabled is False and has_bar:
            raise ValueError("enable_progress_bar=False, but callbacks holds a progress bar: remove one of them")
        if enabled is None:
            enabled = sys.stderr.isatty()  # where tqdm draws
        if enabled and not has_bar:
            from torchsystem_trainer.callbacks.progress_bar import ProgressBar  # the one upward import: a default

            callbacks.append(ProgressBar())
        return callbacks


def _with_default(callbacks: list[Consumer], default: type, flag: str, enabled: bool, argument: str) -> list[Consumer]:
    """Add a ``default()`` callback when ``enabled`` and no callback says ``flag``; refuse one given with
    ``enabled=False``."""
    if not isinstance(enabled, bool):
        raise TypeError(f"Trainer: {argument}={enabled!r} is invalid; valid: True or False")
    given = any(getattr(callback, flag, False) for callback in callbacks)
    if not enabled and given:
        raise ValueError(f"{argument}=False, but callbacks holds a {default.__name__}: remove one of them")
    if enabled and not given:
        callbacks.append(default())
    return callbacks
