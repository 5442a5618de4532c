"""The Trainer: owns the epoch -> phase -> batch loop and produces events; decides nothing else.

Devices, precision and processes belong to the :class:`~torchsystem_trainer.strategies.Strategy`; logging,
checkpointing and stopping rules belong to callbacks, which are consumers of the events in
:mod:`torchsystem_trainer.events`. Argument names and meanings follow Lightning's ``Trainer`` where they match.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch.nn import Module

from torchsystem_trainer.checkpoint import (
    StopSignals,
    aggregate_epoch,
    load_aggregate_state,
    read_checkpoint,
    resolve_checkpoint_path,
    restore,
)
from torchsystem_trainer.checkpoint.sharded import (
    is_sharded_checkpoint,
    read_consolidated,
    restore_sharded,
    save_sharded,
    sharded_checkpoint_state,
)
from torchsystem_trainer.events import (
    EndReason,
    ExceptionRaised,
    FitEnded,
    FitStarted,
    GradientsComputed,
    Stage,
    StageEnded,
    StageEndReason,
    StageStarted,
)
from torchsystem_trainer.profilers import SimpleProfiler, resolve_profiler
from torchsystem_trainer.services import Consumer
from torchsystem_trainer.strategies import CLIP_ALGORITHMS, Strategy, resolve_strategy
from torchsystem_trainer.trainer import arguments as check
from torchsystem_trainer.trainer.callback_list import arrange_callbacks, is_checkpointer
from torchsystem_trainer.trainer.dispatch import EventBus
from torchsystem_trainer.trainer.fit_loop import FitLimits, fit_order, loader_length, run_epochs, warn_empty
from torchsystem_trainer.trainer.loaders import normalize_loaders
from torchsystem_trainer.trainer.logged import bind_log
from torchsystem_trainer.trainer.loop_state import LoopState
from torchsystem_trainer.trainer.outcome import Outcome, apply_outcome, outcome_state
from torchsystem_trainer.trainer.phases import Run, evaluate_phase, predict_phase
from torchsystem_trainer.trainer.progress import Progress
from torchsystem_trainer.trainer.results import build_metrics
from torchsystem_trainer.trainer.seeding import deterministic_algorithms, seed_everything

__all__ = ["Trainer"]

_R = TypeVar("_R")


class Trainer:
    """Trains, validates, tests and predicts with an aggregate, producing events for its callbacks.

    One epoch counter: the aggregate's ``epoch`` (epochs completed; 0 for an aggregate without one). A fit starts
    at ``aggregate.epoch`` and ``max_epochs`` is the total the aggregate reaches, as in Lightning: an aggregate at
    epoch 10 with ``max_epochs=12`` trains epochs 10 and 11; one already at 12 trains none (with a warning).
    ``trainer.current_epoch`` and every event's ``epoch`` read the same number. With no limit at all
    (``max_epochs``, ``max_steps``, ``max_time``, ``min_epochs``, ``min_steps`` all ``None``) a fit trains one more
    epoch, as Keras' ``epochs=1`` (an aggregate at epoch k ends at k + 1); with only some of the others (or
    ``max_epochs=-1``), epochs repeat until a limit or a stop.

    Args:
        callbacks: consumers of the events (``None``: none), dispatched in list order, except that checkpoint callbacks
            (``ModelCheckpoint``) run after all others but those that declare ``runs_after_checkpoints = True``
            (``ConsoleLines``; ``SLURMRequeue``, which requeues a job once its checkpoint is written), which run
            last: ``Callback`` subclasses, or any ``Consumer`` (seed style, handlers with ``Depends``). Checked here:
            a ``Callback`` method that looks like a hook (``on_...``) but matches no event raises.
        strategy: a :class:`Strategy`, or ``"auto"`` (CUDA if present, else MPS, else CPU), ``"cpu"``,
            ``"cuda"``, ``"mps"``, ``"ddp"``, ``"fsdp"``.
        max_epochs: the epoch count the aggregate reaches (>= 0): train until ``aggregate.epoch == max_epochs``;
            ``-1``: no epoch limit (Lightning's), the fit ends by another limit or a stop.
        max_steps: stop after this many optimizer steps (>= 0); with gradient accumulation a step spans
            ``accumulate_grad_batches`` batches.
        min_epochs: a stop requested before the aggregate reaches this epoch count is deferred until it does
            (Lightning's; a ``StopDeferred`` event says so, once); ``SIGTERM``/``SIGINT`` are never deferred.
        min_steps: likewise, until this many optimizer steps of the run (``trainer.global_step``).
        max_time: stop after this wall-clock time, checked after every training batch: seconds, a
            ``timedelta``, or ``"DD:HH:MM:SS"``.
        metrics: a torchmetrics ``Metric``, ``MetricCollection`` or ``{name: Metric}``; cloned per phase,
            updated on the device with ``(predictions, targets)``, computed and reset at each phase's end.
        accumulate_grad_batches: batches per optimizer step (>= 1); the step uses the mean gradient.
        gradient_clip_val: clip gradients to this 2-norm (or absolute value), after unscaling; ``None``: no clip.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        check_val_every_n_epoch: validate in every n-th epoch (>= 1); ``None``: in every epoch, every
            ``val_check_interval`` training batches counted across epochs (which must be an ``int`` then).
        val_check_interval: when, within an epoch, to validate (Lightning's): ``1.0`` (or ``None``, the default) at
            its end; a ``float`` in ``(0, 1)`` after every that fraction of its training batches; an ``int`` n after
            every n training batches (see :mod:`~torchsystem_trainer.trainer.val_check`). A validation inside the
            epoch is followed by ``MidEpochValidated``, which ``EarlyStopping`` and ``ModelCheckpoint`` check.
        num_sanity_val_steps: validation batches run before the first training batch of a fit (Lightning's default
            2; ``-1``: the whole validation loader; ``0``: none), their results reported only by
            ``SanityCheckEnded``; skipped on a fit resumed from a checkpoint and under ``fast_dev_run``.
        limit_train_batches, limit_val_batches, limit_test_batches, limit_predict_batches: run at most this many
            batches of the loader (an ``int``), or this fraction of it (a ``float`` in ``[0, 1]``), per epoch of a
            fit or per ``test``/``predict`` call. ``limit_val_batches`` resolving to 0 batches turns the fit's
            validation off (Lightning's) and applies to ``validate`` too.
        fast_dev_run: ``True`` (or n): one more epoch of 1 (or n) training and validation batches (and ``test``
            and ``predict`` of 1 or n batches), without sanity check, to smoke-test a set-up; ``ModelCheckpoint``
            and the loggers write nothing then.
        enable_progress_bar: add a ``ProgressBar``; ``None`` means when stderr (where it draws) is a terminal.
        enable_model_summary: add a ``ModelSummary`` (a table of the aggregate's modules at each fit's start).
        verbose: add ``ConsoleLines``: a line per epoch when no progress bar draws, and lines for how a fit
            resumes and ends and where its files went (on stderr); ``False`` prints none of them.
        default_root_dir: where callbacks put files when not told otherwise (default ``./runs``).
        seed: seed Python, NumPy and torch at the start of every ``fit`` (see ``seed_everything``).
        deterministic: use deterministic algorithms during ``fit`` (``torch.use_deterministic_algorithms``).
        precision: the precision of a strategy given by name: ``"32-true"`` (default), ``"64-true"``,
            ``"bf16-mixed"``, ``"16-mixed"``.
        profiler: ``None`` (default: nothing is timed, the loop runs the same code as without the argument),
            ``"simple"`` (a table of where the fit's time went, printed at its end: the loader, the batch transfer,
            the aggregate's step, each phase, each callback's handlers by callback and event), ``"pytorch"``
            (``torch.profiler`` over a few training steps, a trace under ``default_root_dir/profiler``, and both
            tables), or a ``SimpleProfiler``/``PyTorchProfiler`` with other settings
            (``torchsystem_trainer.profilers``). Only ``fit`` is profiled.

    Raises:
        ValueError: for an invalid value, naming the argument, the value and what is valid.
        TypeError: for a callback that is not a consumer (or a callback class instead of an instance), an argument
            of the wrong type, or a keyword this Trainer does not take (for a Lightning keyword such as
            ``accelerator`` or ``logger``, the message says what to write here instead).
    """

    default_progress_bar: ClassVar[Callable[[], Consumer] | None] = None
    """Builds the progress bar ``enable_progress_bar`` adds: ``torchsystem_trainer.callbacks.ProgressBar``, set by
    the package's ``__init__`` (the composition root), so this layer imports no callback."""
    default_model_summary: ClassVar[Callable[[], Consumer] | None] = None
    """Builds the ``ModelSummary`` ``enable_model_summary`` adds; set by the package's ``__init__`` likewise."""
    default_console: ClassVar[Callable[[], Consumer] | None] = None
    """Builds the ``ConsoleLines`` ``verbose`` adds; set by the package's ``__init__`` likewise."""

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
        check_val_every_n_epoch: int | None = 1,
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
        min_epochs: int | None = None,
        min_steps: int | None = None,
        val_check_interval: int | float | None = None,
        num_sanity_val_steps: int = 2,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        profiler: str | SimpleProfiler | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            valid = [name for name in inspect.signature(Trainer).parameters if name != "unknown"]
            check.unknown_keywords(unknown, valid)
        self.max_epochs = check.max_epochs(max_epochs)
        self.max_steps = check.non_negative_int("max_steps", max_steps)
        self.max_time = check.seconds("max_time", max_time)
        self.min_epochs = check.non_negative_int("min_epochs", min_epochs)
        self.min_steps = check.non_negative_int("min_steps", min_steps)
        self.accumulate_grad_batches = check.positive_int("accumulate_grad_batches", accumulate_grad_batches)
        self.gradient_clip_val = check.non_negative_float("gradient_clip_val", gradient_clip_val)
        self.gradient_clip_algorithm = check.choice("gradient_clip_algorithm", gradient_clip_algorithm, CLIP_ALGORITHMS)
        self.check_val_every_n_epoch = check.optional_positive_int("check_val_every_n_epoch", check_val_every_n_epoch)
        self.val_check_interval = check.val_check_interval(val_check_interval, self.check_val_every_n_epoch)
        self.num_sanity_val_steps = check.num_sanity_val_steps(num_sanity_val_steps)
        self.limit_train_batches = check.limit("limit_train_batches", limit_train_batches)
        self.limit_val_batches = check.limit("limit_val_batches", limit_val_batches)
        self.limit_test_batches = check.limit("limit_test_batches", limit_test_batches)
        self.limit_predict_batches = check.limit("limit_predict_batches", limit_predict_batches)
        fast = check.fast_dev_run(fast_dev_run)
        self.fast_dev_run: int = fast
        if fast:  # Lightning's fast_dev_run: n batches of every loader, no sanity check, validation at the end
            self.max_epochs, self.max_steps, self.max_time = None, None, None
            self.limit_train_batches = self.limit_val_batches = fast
            self.limit_test_batches = self.limit_predict_batches = fast
            self.num_sanity_val_steps, self.val_check_interval, self.check_val_every_n_epoch = 0, 1.0, 1
        # with no limit at all (or fast_dev_run), a fit trains one more epoch (Keras' epochs=1)
        self._one_more_epoch = fast > 0 or all(
            value is None for value in (self.max_epochs, self.max_steps, self.max_time, self.min_epochs, self.min_steps)
        )
        self.seed = None if seed is None else check.non_negative_int("seed", seed)
        self.deterministic = bool(deterministic)
        self.default_root_dir = Path(default_root_dir) if default_root_dir is not None else Path("runs")
        self.metrics = build_metrics(metrics)
        self.profiler: SimpleProfiler | None = resolve_profiler(profiler)
        self.strategy: Strategy = resolve_strategy(strategy, precision)
        # checkpoint callbacks run last, so the state they save includes every other callback's update of the
        # same event; only callbacks that report on them (ConsoleLines) run after them
        self.callbacks: list[Consumer] = arrange_callbacks(
            list(callbacks or ()),
            enable_progress_bar=enable_progress_bar,
            progress_bar=type(self).default_progress_bar,
            enable_model_summary=enable_model_summary,
            model_summary=type(self).default_model_summary,
            verbose=verbose,
            console=type(self).default_console,
        )
        self._subscriptions = check.subscriptions(self.callbacks)

        self.loop = LoopState()
        self.ckpt_path: Path | None = None  # the checkpoint the last fit resumed from (Lightning's ckpt_path)
        self._bus = EventBus([], [])
        self._run = Run(self, self.strategy, self._bus, self.loop)

    # -- Lightning-style views ----------------------------------------------------------------------------

    @property
    def progress(self) -> Progress:
        """The loop's counters (``loop.progress``): see :class:`Progress`."""
        return self.loop.progress

    @property
    def should_stop(self) -> bool:
        """Whether the fit stops at the next step boundary; a callback sets it to stop the fit (Lightning's
        ``trainer.should_stop``)."""
        return self.loop.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.loop.should_stop = bool(value)

    @property
    def interrupted(self) -> bool:
        """Whether the last fit ended ``"interrupted"`` (a signal or a ``KeyboardInterrupt``)."""
        return self.loop.interrupted

    @property
    def received_signal(self) -> int | None:
        """The signal (``SIGTERM``, ``SIGINT``) that stopped the last fit, or ``None``."""
        return self.loop.received_signal

    @property
    def callback_metrics(self) -> dict[str, float]:
        """The last finished epoch's results, ``{"<phase>/<name>": float}`` (Lightning's name), with its latest
        validation's when that ran in the middle of the epoch (``val_check_interval``); a mid-epoch validation updates
        it as it ends."""
        return self.loop.callback_metrics

    @property
    def sanity_checking(self) -> bool:
        """Whether the sanity check before the first training batch is running (Lightning's name): ``True`` from
        ``SanityCheckStarted`` to ``SanityCheckEnded``, so the aggregate's ``evaluate`` can tell."""
        return self.loop.sanity_checking

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
        return self.loop.loaders.get("train")

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
        ``(predictions, loss)``. Every call is a new run: it starts at ``aggregate.epoch`` and its step counters
        (``trainer.progress.step``/``global_step``) start from zero, unless ``ckpt_path`` restores them. The
        loop's state is ``trainer.loop`` (see ``docs/loop.md``). Events, in order (handlers run in callback-list
        order)::

            FitStarted
            if num_sanity_val_steps and not resumed:          # Lightning's sanity check, before any training
                SanityCheckStarted(batches)                   #   trainer.sanity_checking is True in between
                aggregate.evaluate(*batch) for those batches  #   no Phase/Batch/Validated events, no metrics
                SanityCheckEnded(results)                     #   random generators put back as they were
            for epoch in epochs:                              # from aggregate.epoch, until a limit or a stop
                EpochStarted(epoch)
                PhaseStarted("train")
                for batch in train_loader:                    # aggregate in 'train' phase, under autocast
                    aggregate.fit(*batch)                     #   GradientsComputed before each optimizer step
                    BatchTrained(epoch, batch, step)
                    if a stop was requested:                  #   should_stop, unless min_epochs/min_steps defer
                        break                                 #   it (StopDeferred, once per fit)
                    if validation is due here, mid-epoch:     #   val_check_interval, not the epoch's last batch
                        PhaseStarted("validation")
                        BatchValidated(epoch, batch, step)... #   'evaluation' phase, torch.inference_mode()
                        Validated(results)
                        MidEpochValidated(results as "validation/<name>", batch, step)
                    if max_steps or max_time is reached: break
                Trained(results)
                if validation is due at the epoch's end:      # check_val_every_n_epoch, val_check_interval;
                    PhaseStarted("validation")                #   skipped when the training phase was cut short
                    for batch in validation_loader:           # 'evaluation' phase, torch.inference_mode()
                        aggregate.evaluate(*batch)
                        BatchValidated(epoch, batch, step)
                    Validated(results)
                aggregate.epoch += 1                          # fires onepoch; a committed StopIteration stops
                Iterated(results as "<phase>/<name>")         # the end-of-epoch validation's only
                StopDeferred(...)                             # when a stop came before the minimum (once)
            FitEnded(reason)                                  # always last; see the events module's table

        With the default ``val_check_interval=1.0`` nothing validates inside an epoch. With
        ``val_check_interval=0.5`` on 4 training batches, epoch 0 runs::

            EpochStarted(0), PhaseStarted(0, "train"),
            BatchTrained(0, 0, 1), BatchTrained(0, 1, 2),
            PhaseStarted(0, "validation"), BatchValidated..., Validated(0), MidEpochValidated(0, batch=2, step=2),
            BatchTrained(0, 2, 3), BatchTrained(0, 3, 4), Trained(0),
            PhaseStarted(0, "validation"), BatchValidated..., Validated(0), Iterated(0)

        Resumed from a checkpoint written in the middle of epoch ``e`` after ``k`` training batches, the same
        sequence starts with ``FitStarted``, ``EpochStarted(e)``, ``PhaseStarted("train")`` (read
        ``trainer.progress.batch == k`` there), then ``BatchTrained`` from batch ``k``: the batches trained
        before the checkpoint are neither loaded nor seen again, and the epoch's results include them. No sanity
        check runs. When a mid-epoch validation was due after batch ``k`` and the checkpoint was written before it
        ran (a step checkpoint, an interruption), it runs right after ``PhaseStarted("train")``.

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
            ValueError: for loaders without a ``"train"`` phase or with a phase ``fit`` does not run, or an empty
                training loader (``len`` 0: before any event; an iterable without ``len`` that yields nothing: in
                the first epoch). An empty validation loader is dropped with a warning instead.
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
        self._launch(self._fit, aggregate, fit_order(pairs), ckpt_path)

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
        return self._launch(self._predict, aggregate, loader)

    def save_checkpoint(
        self, filepath: str | os.PathLike[str], weights_only: bool = False, *, aggregate: Module | None = None
    ) -> Path:
        """Write a checkpoint of ``aggregate`` and this trainer now, atomically, as ``ModelCheckpoint`` does
        (Lightning's ``Trainer.save_checkpoint``): the whole state of ``checkpoint_state`` (resumable with
        ``fit(ckpt_path=filepath)``), or with ``weights_only`` the weights alone (``weights_state``: for
        ``load_weights``/``load_model``, not for resuming). Written by the process of global rank 0 only; under a
        strategy with sharded checkpoints (``FSDPStrategy``) every process must call it: the whole state is then a
        ``torch.distributed.checkpoint`` folder at ``filepath`` each process writes its shard of
        (:mod:`~torchsystem_trainer.checkpoint.sharded`), and the weights-only file holds the weights gathered to
        rank 0.

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
        if self.strategy.sharded_checkpoints and not weights_only:
            return save_sharded(sharded_checkpoint_state(self, target), filepath)
        if weights_only:
            gathered = self.strategy.aggregate_state(target)["modules"] if self.strategy.sharded_checkpoints else None
            state = weights_state(target, self.callbacks, modules=gathered)
        else:
            state = checkpoint_state(self, target)
        if self.strategy.is_global_zero:
            save_atomic(state, filepath)
        return Path(filepath)

    # -- the run ----------------------------------------------------------------------------------------

    def _launch(self, function: Callable[..., _R], *args: Any) -> _R:
        """Run ``function(*args)`` in every process of the strategy (:meth:`Strategy.launch`); when it ran in other
        processes (the strategy started them), apply rank 0's outcome to this Trainer: the loop's counters, stop
        flags and ``callback_metrics``, the strategy's state and every stateful callback's (so ``ModelCheckpoint``'s
        ``best_model_path`` is known here). The launcher itself brings back the result and the aggregate's state."""
        outcome: Outcome = self.strategy.launch(self._in_process, os.getpid(), function, *args)
        if outcome.state is not None:
            apply_outcome(self, outcome.state)
        return outcome.result  # type: ignore[no-any-return]

    def _in_process(self, caller: int, function: Callable[..., Any], *args: Any) -> Outcome:
        """What every process runs: ``function``; in a process other than the caller's, its outcome goes with the
        result (a bound method of this Trainer: ``spawn`` pickles it with the Trainer)."""
        result = function(*args)
        return Outcome(result, None if os.getpid() == caller else outcome_state(self))

    def _start(self, aggregate: Any, profiler: SimpleProfiler | None = None) -> None:
        """What every entry point does first, in every process: set up the strategy, the event bus and the loop's
        run (``profiler``: the fit's, which then times the callbacks' handlers and the phases)."""
        strategy = self.strategy
        zero = strategy.is_global_zero
        sharded = strategy.sharded_checkpoints  # every process writes its shard: checkpoint callbacks run everywhere
        kept = [
            (callback, table)
            for callback, table in zip(self.callbacks, self._subscriptions, strict=True)
            if zero or not getattr(callback, "rank_zero_only", False) or (sharded and is_checkpointer(callback))
        ]
        wrap = None if profiler is None else profiler.wrap
        self._bus = EventBus([c for c, _ in kept], [t for _, t in kept], wrap)
        strategy.configure(
            accumulate_grad_batches=self.accumulate_grad_batches,
            gradient_clip_val=self.gradient_clip_val,
            gradient_clip_algorithm=self.gradient_clip_algorithm,  # type: ignore[arg-type]
            on_gradients=self._on_gradients if self._bus.handlers(GradientsComputed) else None,
        )
        strategy.setup(aggregate)
        self._aggregate = aggregate
        self.loop.begin(self.metrics, strategy.root_device, strategy.world_size, strategy.global_rank)
        self.loop.progress.epoch = aggregate_epoch(aggregate) or 0  # the one epoch counter: the aggregate's
        self._run = Run(self, strategy, self._bus, self.loop, profiler)

    def _on_gradients(self, optimizer: Any) -> None:
        progress = self.loop.progress
        self._bus.emit(GradientsComputed, self, self._aggregate, progress.epoch, progress.step + 1, optimizer)

    def _fit(self, aggregate: Any, pairs: list[tuple[str, Iterable[Any]]], ckpt_path: Any) -> None:
        if self.seed is not None:
            seed_everything(self.seed)
        loop = self.loop
        loop.reset()
        self.ckpt_path = None
        if aggregate_epoch(aggregate) is None:
            aggregate.epoch = 0  # a first value: an Aggregate fires no onepoch for it
        profiler = self.profiler
        self._start(aggregate, profiler)
        reason: EndReason = "exception"
        bus = self._bus
        with StopSignals(loop.on_signal) as signals:
            try:  # whatever happens from here, the strategy is torn down (inside StopSignals, as the fit runs)
                # a loader the strategy refuses or a checkpoint that cannot be used fails the fit before it starts:
                # no event (and a bad checkpoint changes nothing); the loaders come first, restoring reads them
                loaders = [(phase, self.strategy.process_dataloader(loader, phase)) for phase, loader in pairs]
                loop.loaders = dict(loaders)
                path = None if ckpt_path is None else resolve_checkpoint_path(self, ckpt_path)
                if path is not None:
                    (restore_sharded if is_sharded_checkpoint(path) else restore)(self, aggregate, path)
                    loop.progress.epoch = aggregate_epoch(aggregate) or 0  # the aggregate's, restored
                    self.ckpt_path = path
                if profiler is not None:
                    profiler.start(self.default_root_dir, self.strategy.root_device, self.strategy.global_rank)
                try:
                    with deterministic_algorithms(self.deterministic):
                        bus.emit(FitStarted, self, aggregate)
                        reason = run_epochs(self._run, aggregate, loaders, self._limits(resumed=path is not None))
                    loop.interrupted = reason == "interrupted"
                except KeyboardInterrupt as error:
                    reason, loop.interrupted = "interrupted", True
                    bus.emit(ExceptionRaised, self, aggregate, error)
                    if signals.insisted:  # a second SIGINT while stopping: the user wants out now
                        raise
                except BaseException as error:
                    bus.emit(ExceptionRaised, self, aggregate, error)
                    raise
                finally:
                    try:
                        bus.emit(FitEnded, self, aggregate, reason)
                    finally:
                        if profiler is not None:
                            profiler.stop(print_report=self.strategy.is_global_zero)
            finally:
                bind_log(aggregate, None)  # a phase that raised left its results bound to Aggregate.log
                self.strategy.teardown(aggregate)
                # the trainer sits in reference cycles; a loader it kept would live until the cyclic GC, and a
                # persistent-workers iterator freed by that GC waits 5 s per worker to shut down
                loop.loaders = {}

    def _limits(self, resumed: bool) -> FitLimits:
        return FitLimits(
            max_epochs=None if self.max_epochs == -1 else self.max_epochs,
            one_more_epoch=self._one_more_epoch,
            max_steps=self.max_steps,
            max_time=self.max_time,
            limit_train_batches=self.limit_train_batches,
            limit_val_batches=self.limit_val_batches,
            check_val_every_n_epoch=self.check_val_every_n_epoch,
            val_check_interval=self.val_check_interval,
            min_epochs=self.min_epochs,
            min_steps=self.min_steps,
            num_sanity_val_steps=0 if resumed else self.num_sanity_val_steps,  # Lightning skips it when restarting
        )

    def _evaluate_only(self, aggregate: Module, loaders: Any, phase: str, ckpt_path: Any) -> dict[str, float]:
        method = "test" if phase == "test" else "validate"
        check.aggregate(aggregate, ("evaluate",), method)
        (_, loader), = normalize_loaders(loaders, (phase,), method)
        if loader_length(loader) == 0:
            warn_empty(phase, method)
        if ckpt_path is not None:
            path = resolve_checkpoint_path(self, ckpt_path)
            if path is None:
                raise ValueError(f"Trainer.{method}: ckpt_path={ckpt_path!r}, but there is no checkpoint yet")
            saved = read_consolidated(path, weights_only=True) if is_sharded_checkpoint(path) else read_checkpoint(path)
            load_aggregate_state(aggregate, saved["aggregate"], str(path))
        return self._launch(self._run_evaluation, aggregate, loader, phase)

    def _run_evaluation(self, aggregate: Module, loader: Iterable[Any], phase: str) -> dict[str, float]:
        def run() -> dict[str, float]:
            limit = self.limit_val_batches if phase == "validation" else self.limit_test_batches
            return evaluate_phase(self._run, aggregate, self.strategy.process_dataloader(loader, phase), phase, limit)

        return self._run_stage(aggregate, "validate" if phase == "validation" else "test", run)

    def _predict(self, aggregate: Any, loader: Iterable[Any]) -> list[Any]:
        def run() -> list[Any]:
            adapted = self.strategy.process_dataloader(loader, "predict")
            return predict_phase(self._run, aggregate, adapted, self.limit_predict_batches)

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
            bind_log(aggregate, None)
            self.strategy.teardown(aggregate)
