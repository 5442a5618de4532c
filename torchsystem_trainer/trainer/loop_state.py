"""The loop's state: everything a fit has reached that is not the aggregate's, the callbacks' or the strategy's.

One :class:`LoopState` per Trainer, public as ``trainer.loop`` (torchtnt's ``State``, Lightning's ``fit_loop``). The
loop code (:mod:`.phases`, :mod:`.trainer`) reads and advances it; checkpoints save and restore it through
:meth:`LoopState.state_dict` / :meth:`LoopState.load_state_dict` (the ``Stateful`` protocol that
``torch.distributed.checkpoint`` also speaks); the Trainer hands its outcome from a spawned process back to the
caller through its public attributes. Nothing else reaches inside.

What it holds:

* ``progress``: the counters (:class:`~.progress.Progress`);
* ``position``: where the training loader stands within its epoch
  (:class:`~torchsystem_trainer.checkpoint.TrainPosition`);
* the running results of every phase (:meth:`LoopState.results`), the training phase's saved mid-epoch, with the
  partial reductions of what the aggregate logged (:meth:`LoopState.step_values` and :meth:`LoopState.bar_values`
  give its latest values);
* the stop flags: ``should_stop``, ``stop_signalled`` (set by ``SIGTERM``/``SIGINT``), ``interrupted``,
  ``received_signal``, ``stop_deferred`` (a stop deferred by ``min_epochs``/``min_steps``);
* ``validated_step``: the ``progress.step`` of the fit's latest mid-epoch validation (``val_check_interval``);
* ``sanity_checking``: the sanity check before the first training batch is running;
* ``callback_metrics``, the last epoch's results (and the latest mid-epoch validation's);
* ``loaders``: the running fit's loaders (as the strategy adapted them), by phase; empty outside a fit.

A new feature that keeps per-phase state a checkpoint must hold (a reduction of logged values, a mid-epoch
validation's position) adds it here: an attribute, reset in :meth:`reset` or :meth:`begin`, one key in
:meth:`state_dict`, and its restore in :meth:`load_state_dict` (tolerating a checkpoint without the key, written
before the feature). Keys are plain data only (``torch.load(weights_only=True)`` reads them back).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from torchsystem_trainer.checkpoint import TrainPosition, generator_states, load_generator_states
from torchsystem_trainer.domain.logged import LoggedValue
from torchsystem_trainer.events import EndReason
from torchsystem_trainer.trainer.progress import Progress
from torchsystem_trainer.trainer.results import PhaseResults

if TYPE_CHECKING:  # torchmetrics imports scipy and PIL (over a second); loaded only when metrics are given
    from torchmetrics import MetricCollection

__all__ = ["LoopState"]


class LoopState:
    """The state of the Trainer's loop (see the module docstring).

    Attributes:
        progress: the counters of the current (or last) fit.
        position: the training loader's position within its epoch (for exact mid-epoch resumes).
        loaders: the running fit's loaders by phase, as the strategy adapted them; ``{}`` outside a fit.
        should_stop: a stop was requested (by a callback, ``EarlyStopping``, the aggregate's domain events or a
            signal); the fit ends at the next step boundary.
        stop_signalled: ``should_stop`` was set by ``SIGTERM``/``SIGINT`` (the fit ends ``"interrupted"``; not saved,
            so a resumed fit continues).
        interrupted: the last fit ended ``"interrupted"``.
        received_signal: the signal number that stopped the last fit, or ``None``.
        stop_deferred: a requested stop was deferred in this fit because ``min_epochs``/``min_steps`` was not
            reached (``StopDeferred`` fired; not saved).
        validated_step: ``progress.step`` when the fit's latest mid-epoch validation ran (``None``: none yet); a
            fit resumed at a position where a mid-epoch validation is due runs it unless this says it ran.
        sanity_checking: the sanity check (``num_sanity_val_steps``) is running (Lightning's
            ``trainer.sanity_checking``).
        callback_metrics: the last finished epoch's results, ``{"<phase>/<name>": float}``, updated with each
            mid-epoch validation's ``"validation/<name>"`` results as it ends, and keeping the epoch's latest ones
            at its end when the end does not validate (saved: a resumed fit's step checkpoints are ranked as the
            uninterrupted run's).
        world_size, global_rank: the processes of the run this state belongs to (set by :meth:`begin`).
    """

    def __init__(self) -> None:
        self.progress = Progress()
        self.position = TrainPosition()
        self.loaders: dict[str, Iterable[Any]] = {}
        self.should_stop = False
        self.stop_signalled = False
        self.interrupted = False
        self.received_signal: int | None = None
        self.stop_deferred = False
        self.validated_step: int | None = None
        self.sanity_checking = False
        self.callback_metrics: dict[str, float] = {}
        self.world_size = 1
        self.global_rank = 0
        self._results: dict[str, PhaseResults] = {}
        self._metrics: MetricCollection | None = None
        self._device = torch.device("cpu")

    # -- the life of a run ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the previous fit: a new fit starts at zero (until a checkpoint is loaded)."""
        self.progress = Progress()
        self.position = TrainPosition()
        self.loaders = {}
        self.should_stop = self.stop_signalled = self.interrupted = False
        self.received_signal = None
        self.stop_deferred = self.sanity_checking = False
        self.validated_step = None
        self.callback_metrics = {}
        self._results = {}

    def begin(
        self,
        metrics: MetricCollection | None,
        device: torch.device,
        world_size: int = 1,
        global_rank: int = 0,
    ) -> None:
        """Start a run (a fit, or a stand-alone validate/test/predict) in this process: fresh phase results.

        Args:
            metrics: the metrics template, cloned per phase; ``None`` for none.
            device: where the phases' results live (the strategy's root device).
            world_size: the run's number of processes.
            global_rank: this process's rank.
        """
        self._metrics, self._device = metrics, device
        self.world_size, self.global_rank = world_size, global_rank
        self._results = {}

    def results(self, phase: str, of: str | None = None) -> PhaseResults:
        """The running results of ``phase`` in this run, created (with a clone of the metrics) at first use.

        Args:
            phase: the slot (a phase's name, or another name for results kept apart, as the sanity check's).
            of: the phase the results are of, as messages and keys name it (default ``phase``).
        """
        results = self._results.get(phase)
        if results is None:
            metrics = None if self._metrics is None else self._metrics.clone().to(self._device)
            results = self._results[phase] = PhaseResults(metrics, self._device, of or phase)
        return results

    def step_values(self, phase: str) -> dict[str, LoggedValue]:
        """What the aggregate logged with ``on_step=True`` in ``phase``'s latest batch, ``{"<phase>/<name>_step":
        value}``: tensors on their device, unread (read them with ``trainer.logged.read_values``, once per use);
        ``{}`` when it logged none. Loggers write these every ``log_every_n_steps`` steps."""
        results = self._results.get(phase)
        return {} if results is None else results.logged.step_values()

    def bar_values(self, phase: str) -> dict[str, LoggedValue]:
        """The latest value of each name the aggregate logged with ``prog_bar=True`` in ``phase``, ``{name:
        value}`` (unread, as :meth:`step_values`); what progress bars show."""
        results = self._results.get(phase)
        return {} if results is None else results.logged.bar_values()

    def on_signal(self, signal_number: int) -> None:
        """``SIGTERM``/``SIGINT`` arrived: stop after the current training step, ``"interrupted"``."""
        self.received_signal = signal_number
        if not self.should_stop:
            self.should_stop = self.stop_signalled = True

    def stop_reason(self) -> EndReason:
        """Why a requested stop ends the fit: ``"interrupted"`` for a signal, else ``"stopped"``."""
        return "interrupted" if self.stop_signalled else "stopped"

    # -- persistence ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs of the loop, as plain data (see :mod:`torchsystem_trainer.checkpoint.state`).

        Call it from an event handler of a running fit: the position is the one of that moment.

        Returns:
            ``{"progress": {...}, "world_size": int, "global_rank": int, "should_stop": bool,
            "train": position | None, "train_results": PhaseResults.state_dict() | None,
            "generators": {phase: [uint8 tensor]}, "sampler_seeds": {phase: int}, "validated_step": int | None,
            "callback_metrics": {key: float}}``; ``"train"`` holds the global generators' states of this moment
            (``"rng"``) when the epoch is unfinished.
        """
        consumed = self.progress.batch
        train = self.loaders.get("train")
        results = self._results.get("train") if consumed > 0 else None
        return {
            "progress": self.progress.state_dict(),
            "world_size": int(self.world_size),
            "global_rank": int(self.global_rank),
            "should_stop": bool(self.should_stop and not self.stop_signalled),
            "train": None if train is None else self.position.state_dict(train, consumed),
            "train_results": None if results is None else results.state_dict(),
            "generators": {
                phase: generator_states(loader) for phase, loader in self.loaders.items() if phase != "train"
            },
            "sampler_seeds": {
                phase: seed for phase, loader in self.loaders.items() if (seed := _sampler_seed(loader)) is not None
            },
            "validated_step": self.validated_step,
            "callback_metrics": {str(key): float(value) for key, value in self.callback_metrics.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output: the counters, the stop request, the training loader's position
        (the next training phase starts at the saved batch), the epoch's training results, the other loaders'
        generators, the ``DistributedSampler`` seeds, the latest mid-epoch validation's step (a file written
        before it was saved: ``None``, so a validation due at the saved position runs) and ``callback_metrics`` (what
        a step checkpoint is ranked by until the next validation; ``{}`` from a file written before it was saved).
        Call it after
        :meth:`begin`, with :attr:`loaders` set.

        Everything is checked before anything changes.

        Raises:
            KeyError, TypeError, ValueError: for a malformed state (a missing counter, unreadable results); nothing
                changes then.

        Warns:
            UserWarning: when the state was saved by a run of another number of processes (the data order
                changes), when the unfinished epoch has no training results, or when its metrics differ from the
                configured ones (the metrics then restart at the resume point).
        """
        saved_progress = {key: int(state["progress"][key]) for key in ("epoch", "batch", "step", "global_step")}
        saved_world_size = int(state.get("world_size", 1))
        consumed = _consumed(saved_progress["batch"], saved_world_size, self.world_size)
        results = self._restored_results(state, consumed, saved_world_size)
        train = state.get("train")
        position = TrainPosition()
        if train is not None and "train" in self.loaders:
            position.load_state_dict(train, train.get("rng"), consumed)
        progress = Progress()
        progress.load_state_dict({**saved_progress, "batch": consumed})
        validated = state.get("validated_step")
        validated_step = None if validated is None else int(validated)
        callback_metrics = {str(key): float(value) for key, value in state.get("callback_metrics", {}).items()}
        # checked: now change
        self.progress, self.position = progress, position
        self.should_stop = bool(state.get("should_stop", False))
        self.validated_step = validated_step
        self.callback_metrics = callback_metrics
        if results is not None:
            self._results["train"] = results
        for phase, states in state.get("generators", {}).items():
            if phase in self.loaders:
                load_generator_states(self.loaders[phase], states, f"the {phase!r} loader")
        for phase, seed in state.get("sampler_seeds", {}).items():
            loader = self.loaders.get(phase)
            if loader is not None and _sampler_seed(loader) is not None:
                loader.sampler.seed = int(seed)  # type: ignore[attr-defined]  # a DistributedSampler: its own seed

    def _restored_results(self, state: dict[str, Any], consumed: int, saved_world_size: int) -> PhaseResults | None:
        """The unfinished epoch's training results, loaded into a new ``PhaseResults``; ``None`` when there are none
        to take: at an epoch's boundary, and under several processes in a process whose own results the state does
        not hold (a checkpoint file holds rank 0's, and the others start the epoch's results afresh; a sharded
        checkpoint holds every process's)."""
        saved = state.get("train_results")
        own = int(state.get("global_rank", 0)) == self.global_rank
        if consumed == 0 or saved_world_size != self.world_size or not own:
            return None
        if saved is None:
            warnings.warn(
                "the checkpoint holds no training results for its unfinished epoch; that epoch's train results will "
                "cover only the batches after the resume",
                stacklevel=3,
            )
            return None
        metrics = None if self._metrics is None else self._metrics.clone().to(self._device)
        results = PhaseResults(metrics, self._device, "train")
        try:
            results.load_state_dict(saved)
        except ValueError as error:  # the metrics changed: keep the loss, start the metrics at the resume point
            warnings.warn(
                f"{error}; the metrics of its unfinished epoch cover only the batches after the resume", stacklevel=3
            )
            results.load_state_dict(saved, strict=False)
        except (KeyError, AttributeError) as error:
            raise ValueError(f"the training results of the unfinished epoch cannot be restored ({error!r})") from error
        return results


def _sampler_seed(loader: Any) -> int | None:
    """The ``seed`` of a loader's sampler that shuffles by seed and epoch (``DistributedSampler``), else ``None``."""
    seed = getattr(getattr(loader, "sampler", None), "seed", None)
    return seed if type(seed) is int else None


def _consumed(batch: int, saved_world_size: int, world_size: int) -> int:
    """The batches of the current epoch this process has consumed, after a change in the number of processes
    (a ``DistributedSampler`` gives each process every ``world_size``-th sample of one permutation, so the batches
    consumed by all processes together are a prefix of it, whatever their number)."""
    if saved_world_size == world_size:
        return batch
    converted = batch * saved_world_size // world_size
    warnings.warn(
        f"the checkpoint was written by a run of {saved_world_size} process(es) and this one has {world_size}: each "
        f"process now sees other samples, so the data order (and the result) differs from the uninterrupted run"
        + (
            f"; the current epoch continues after {converted} batches per process (it had consumed {batch} per "
            f"process{'' if batch * saved_world_size % world_size == 0 else ', so a few samples are seen twice'}) "
            f"and its training results cover only the batches after the resume"
            if batch
            else ""
        ),
        stacklevel=4,
    )
    return converted
