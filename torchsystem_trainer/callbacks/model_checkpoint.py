"""``ModelCheckpoint``: save the whole training state to files, keep the best ones, and find them again to resume.

Lightning's callback of that name, with these differences: ``last.ckpt`` is never a symlink; file names are the
template as written (no metric names inserted); the exception checkpoint is a flag here rather than Lightning's
separate ``OnExceptionCheckpoint``.

Under a strategy with sharded checkpoints (``FSDPStrategy``: ``strategy.sharded_checkpoints``) every checkpoint is
a ``torch.distributed.checkpoint`` folder of that name (``epoch=1-step=8.ckpt/``) that every process writes its shard
of (:mod:`~torchsystem_trainer.checkpoint.sharded`), so the callback runs in every process: rank 0 decides the
names and the files kept and broadcasts them, every process writes, rank 0 links ``last.ckpt`` (a folder of hard
links) and deletes what left the top ``k``. A folder is complete once its metadata is written, last; one without it
is never ``last`` or ``best``. With ``save_weights_only`` the weights are gathered to rank 0, which writes one file
as usual.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.callbacks.checkpoint_files import (
    EXTENSION,
    admit,
    best_of,
    check_template,
    free_path,
    newest_checkpoint,
    render,
    warn_untracked,
)
from torchsystem_trainer.callbacks.checkpoint_writes import (
    BackgroundWrites,
    remove_checkpoint,
    write_collectively,
    write_files,
)
from torchsystem_trainer.callbacks.monitor import Mode, check_mode, monitored_value, warn_never_seen
from torchsystem_trainer.checkpoint import callback_keys, checkpoint_state, load_file, save_atomic, weights_state
from torchsystem_trainer.checkpoint.sharded import (
    is_complete,
    is_sharded_checkpoint,
    read_sharded,
)
from torchsystem_trainer.events import (
    BatchTrained,
    ExceptionRaised,
    FitEnded,
    FitStarted,
    Iterated,
    MidEpochValidated,
)

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Write checkpoints at the end of every ``every_n_epochs``-th epoch and/or every ``every_n_steps``-th
    optimizer step, keep the ``save_top_k`` best by ``monitor`` (or the latest ``save_top_k`` without one), and
    keep ``last.ckpt`` up to date. Runs in the process of global rank 0 only; in every process under a strategy with
    sharded checkpoints (see the module docstring).

    Each file holds :func:`~torchsystem_trainer.checkpoint.checkpoint_state` (aggregate, loop progress, every
    callback's state, precision scaler, random generators), written with
    :func:`~torchsystem_trainer.checkpoint.save_atomic`, so ``Trainer.fit(ckpt_path=...)`` continues from it.
    An epoch checkpoint is written at ``Iterated`` (its progress says the next epoch, batch 0), and, in the same
    epochs (``every_n_epochs``), after each validation inside an epoch (``MidEpochValidated``,
    ``val_check_interval``: its progress is that batch's, the validation done), as Lightning saves after every
    validation; a step checkpoint at ``BatchTrained`` (its progress counts that batch). A file that leaves the top
    ``k`` is deleted only after the new file is complete. A name already in use gets ``-v1``, ``-v2``... (no file is
    overwritten by another checkpoint), except that an epoch (or mid-epoch validation) checkpoint written at the same
    optimizer step as the step checkpoint before it replaces that file: it is the same point of training, with the
    epoch's end (or the validation) recorded.

    With ``monitor``, the monitored value of an epoch checkpoint is the epoch's result, of a mid-epoch validation's
    checkpoint that validation's (``MidEpochValidated.results``, ``"validation/..."`` keys only); a step checkpoint
    uses the latest results (``trainer.callback_metrics``). At a save where ``monitor`` (or a metric in
    ``filename``) is missing because its phase did not run, no top-k file is written (``last.ckpt`` still is).
    A ``nan`` score ranks worst.

    ``last.ckpt`` is written at every save, even when no top-k file is: a hard link to the file just written when
    the file system allows (no second write of the same bytes), else a second atomic write. Either way it is a
    file of its own: deleting the file it was linked from leaves it intact.

    The Trainer runs checkpoint callbacks after all others, so the state of every other callback in a checkpoint
    includes its handling of the event the checkpoint is written at (``Iterated``, ``BatchTrained``).

    Args:
        dirpath: the folder of the files; default ``trainer.default_root_dir / "checkpoints"``, resolved when a fit
            starts.
        filename: the name template, without or with ``.ckpt`` (see
            :mod:`~torchsystem_trainer.callbacks.checkpoint_files`); default ``"epoch={epoch}-step={step}"``.
        monitor: the ``"<phase>/<name>"`` key to rank files by; ``None`` keeps the latest ``save_top_k``.
        mode: ``"min"`` (lower is better) or ``"max"``.
        save_top_k: how many files to keep: ``-1`` all, ``0`` none (only ``last.ckpt``, if asked).
        save_last: maintain ``last.ckpt``, the newest state (``None``/``False``: no).
        every_n_epochs: save at the end of every n-th epoch (``0``: never); default 1, or 0 when ``every_n_steps``
            is given.
        every_n_steps: save after every n-th optimizer step (``trainer.global_step``; ``0`` or ``None``: never).
        save_on_exception: write ``on_exception.ckpt`` when the fit ends by an exception or ``KeyboardInterrupt``
            (after ``FitStarted``; a failure to write it is a warning, so the original exception propagates). Not
            under sharded checkpoints (the processes an exception stopped could not write their shards): a warning
            says so.
        save_weights_only: every file holds only the weights (:func:`~torchsystem_trainer.checkpoint.weights_state`:
            the aggregate's modules, epoch and identity, and the averaged weights of ``EMA``/``SWA``), for
            ``load_weights``, ``load_model`` and ``validate``/``test(ckpt_path=...)``; such files cannot resume a fit,
            so ``fit(ckpt_path=...)`` refuses them (Lightning's ``save_weights_only``).
        async_save: write the files in a background thread: at each checkpoint the state is copied into CPU memory
            (the only pause of the training loop; the buffers are reused from one checkpoint to the next), then
            written while training goes on. The next checkpoint waits for the previous write, the fit waits for the
            last one before it ends, and an error of a background write is raised in the fit (at the next
            checkpoint or at the end) as a ``CheckpointError`` naming the file. Crash safety is unchanged: a
            ``SIGKILL`` during a background write leaves the previous checkpoint complete and in charge. Costs
            CPU memory the size of one checkpoint for the fit's duration. Under sharded checkpoints every process
            copies its shards with ``torch.distributed.checkpoint``'s stager and writes them in the background on a
            process group of the writers' own, as DCP's ``async_save`` does. The pause per checkpoint is measured in
            docs/performance.md ("Asynchronous checkpoints").

    A fit stopped by ``SIGTERM`` or ``SIGINT`` (``FitEnded`` with reason ``"interrupted"`` and no
    ``ExceptionRaised``: the loop stopped between two steps) always writes ``last.ckpt``, whatever ``save_last``,
    so ``fit(ckpt_path="last")`` continues exactly from there (preemption).

    Attributes:
        best_k_models: path -> score (``None`` without ``monitor``) of the files kept, oldest first.
        best_model_path, best_model_score: the best file and its score (without ``monitor``: the latest file).
        last_model_path: the path of ``last.ckpt`` once written.
        dirpath: the folder, once resolved (absolute).

    Raises:
        ValueError: for an invalid argument, naming it, the value and the valid values.
        MonitorError: (at a save) when ``monitor`` or a metric in ``filename`` is missing from the results of a
            phase that ran, or names no phase; the message lists the available keys.
    """

    rank_zero_only = True
    LAST_NAME = "last"
    EXCEPTION_NAME = "on_exception"
    DEFAULT_FILENAME = "epoch={epoch}-step={step}"

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: Mode = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        async_save: bool = False,
    ) -> None:
        owner = "ModelCheckpoint"
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"{owner}: monitor={monitor!r} is invalid; valid: None or a key like 'validation/loss'")
        if not _is_int(save_top_k) or save_top_k < -1:
            raise ValueError(f"{owner}: save_top_k={save_top_k!r} is invalid; valid: an int >= -1 (-1 keeps all)")
        if save_last not in (None, True, False):
            raise ValueError(
                f"{owner}: save_last={save_last!r} is invalid; valid: None, True, False (last.ckpt is always a file "
                f"of its own, never a symbolic link)"
            )
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"{owner}: {name}={value!r} is invalid; valid: None or an int >= 0 (0: never)")
        reserved = (self.LAST_NAME, self.EXCEPTION_NAME)
        self.filename = check_template(owner, self.DEFAULT_FILENAME if filename is None else filename, reserved)
        self.monitor = monitor
        self.mode: Mode = check_mode(owner, mode)
        self.save_top_k = save_top_k
        self.save_last = bool(save_last)
        self.every_n_steps = every_n_steps or 0
        self.every_n_epochs = (1 if not every_n_steps else 0) if every_n_epochs is None else every_n_epochs
        self.save_on_exception = bool(save_on_exception)
        self.save_weights_only = bool(save_weights_only)
        self.async_save = bool(async_save)
        self._background: BackgroundWrites | None = None  # built when a fit starts (threads do not pickle)
        self._dirpath_argument = None if dirpath is None else Path(dirpath)
        self.dirpath: Path | None = self._dirpath_argument
        self._owner = owner if monitor is None else f"{owner}(monitor={monitor!r})"
        self.best_k_models: dict[str, float | None] = {}
        self.best_model_path: str | None = None
        self.best_model_score: float | None = None
        self.last_model_path: str | None = None
        self._last_global_step_saved = -1
        self._last_path: str | None = None
        self._loaded: dict[str, Any] | None = None
        self._fitting = False
        self._raised = False
        self._checks = 0

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Resolve the folder; reconcile a restored state with it; warn about files that are not this run's and
        about stateful callbacks listed after this one."""
        trainer = event.trainer
        self.dirpath = self._resolve(trainer)
        self._fitting, self._checks, self._raised = True, 0, False
        if self.async_save:
            self._background = BackgroundWrites(_collective(trainer), getattr(trainer.strategy, "timeout", None))
        if self._loaded is not None:
            self._reconcile(self._loaded)
            self._loaded = None
        elif not trainer.fast_dev_run and trainer.is_global_zero:
            warn_untracked(self._owner, self.dirpath, {*self.best_k_models, self.last_model_path})

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Save after every ``every_n_steps``-th optimizer step (once per step under gradient accumulation)."""
        trainer = event.trainer
        step = trainer.progress.global_step
        if trainer.fast_dev_run or not self.every_n_steps or step == 0 or step % self.every_n_steps:
            return
        if step != self._last_global_step_saved:
            self._save(trainer, event.aggregate, event.epoch, trainer.callback_metrics)

    def on_iterated(self, event: Iterated) -> None:
        """Save at the end of every ``every_n_epochs``-th epoch."""
        if event.trainer.fast_dev_run or not self.every_n_epochs or (event.epoch + 1) % self.every_n_epochs:
            return
        self._save(event.trainer, event.aggregate, event.epoch, event.results)

    def on_mid_epoch_validated(self, event: MidEpochValidated) -> None:
        """Save after a validation inside an epoch of every ``every_n_epochs``-th epoch, ranked by its results."""
        if event.trainer.fast_dev_run or not self.every_n_epochs or (event.epoch + 1) % self.every_n_epochs:
            return
        self._save(event.trainer, event.aggregate, event.epoch, event.results)

    def on_exception_raised(self, event: ExceptionRaised) -> None:
        """Write ``on_exception.ckpt`` when ``save_on_exception``; a failure to write is only a warning."""
        trainer = event.trainer
        self._raised = True
        try:
            self._wait_for_writes()
        except Exception as error:  # the fit's own exception must propagate, not this one
            warnings.warn(f"{self._owner}: {error}", stacklevel=2)
        if not self.save_on_exception or not self._fitting or trainer.fast_dev_run:
            return
        path = self._resolve(trainer) / f"{self.EXCEPTION_NAME}{EXTENSION}"
        if _collective(trainer):
            if trainer.is_global_zero:
                warnings.warn(
                    f"{self._owner}: {str(path)!r} is not written: a sharded checkpoint needs every process, and the "
                    f"exception may have stopped some; resume from the last complete checkpoint",
                    stacklevel=2,
                )
            return
        try:
            save_atomic(self._state(trainer, event.aggregate), path)
        except Exception as error:  # the fit's own exception must propagate, not this one
            warnings.warn(f"{self._owner}: could not write {str(path)!r}: {error!r}", stacklevel=2)

    def on_fit_ended(self, event: FitEnded) -> None:
        """Wait for a background write in flight; write ``last.ckpt`` when a signal stopped the fit; warn when
        ``monitor`` was never found during the fit (no top-k file was written).

        Raises:
            CheckpointError: when a background write failed (unless the fit is failing already: then a warning).
        """
        try:
            self._wait_for_writes()
        except Exception as error:
            if not self._raised:
                self._close_writer()
                self._fitting = False
                raise
            warnings.warn(f"{self._owner}: {error}", stacklevel=2)
        self._close_writer()
        if event.reason == "interrupted" and self._fitting and not self._raised and not event.trainer.fast_dev_run:
            last = self._resolve(event.trainer) / f"{self.LAST_NAME}{EXTENSION}"
            if _collective(event.trainer):
                write_collectively(event.trainer, event.aggregate, None, last, self.save_weights_only)
            else:
                save_atomic(self._state(event.trainer, event.aggregate), last)
            self.last_model_path = str(last)
        self._fitting = False
        if self.monitor is not None and self.save_top_k != 0 and not event.trainer.fast_dev_run:
            warn_never_seen(self._owner, self.monitor, self._checks, event.reason, bool(event.trainer.callback_metrics))

    # -- finding files ----------------------------------------------------------------------------------

    def checkpoint_path(self, which: Literal["last", "best"], trainer: Any) -> Path | None:
        """The file ``Trainer.fit(ckpt_path="last"|"best")`` resumes from.

        Args:
            which: ``"last"``: the complete checkpoint in the folder that holds the most progress (see
                :func:`~torchsystem_trainer.callbacks.checkpoint_files.newest_checkpoint`); ``"best"``:
                ``best_model_path``, or in a fresh process the one saved in the newest checkpoint.
            trainer: the trainer, to resolve the folder when no fit has started yet.

        Returns:
            The path, or ``None`` when there is none (so one command both starts and resumes a run).

            With ``save_weights_only`` ``"last"`` is ``last.ckpt`` when it exists (weights-only files hold no
            progress to rank by); ``validate``/``test`` load it, ``fit`` refuses it (it cannot resume).

        Raises:
            ValueError: for another ``which``.
        """
        if which == "last" and self.save_weights_only:
            last = self._resolve(trainer) / f"{self.LAST_NAME}{EXTENSION}"
            return last if last.is_file() else None
        if which == "best":
            if self.best_model_path:
                return Path(self.best_model_path)
            return self._best_of_last_run(trainer)  # a fresh process: ask the newest checkpoint
        if which == "last":
            return newest_checkpoint(self._resolve(trainer), self.LAST_NAME, self.EXCEPTION_NAME)
        raise ValueError(f"{self._owner}.checkpoint_path: which={which!r} is invalid; valid: 'last', 'best'")

    def _best_of_last_run(self, trainer: Any) -> Path | None:
        """The ``best_model_path`` this callback had saved in the newest checkpoint of its folder, if any (weights-only
        files hold no callback state: none then)."""
        if self.save_weights_only:
            return None
        newest = newest_checkpoint(self._resolve(trainer), self.LAST_NAME, self.EXCEPTION_NAME)
        if newest is None:
            return None
        callbacks = list(trainer.callbacks)
        key = callback_keys(callbacks)[next(i for i, c in enumerate(callbacks) if c is self)]
        checkpoint = read_sharded(newest) if is_sharded_checkpoint(newest) else load_file(newest)
        saved = checkpoint.get("callbacks", {}).get(key, {})
        best = saved.get("best_model_path")
        return Path(best) if best and is_complete(best) else None

    def _resolve(self, trainer: Any) -> Path:
        """The folder as an absolute path (as Lightning does), so the paths kept in the state survive a change of
        working directory between runs."""
        folder = self._dirpath_argument or Path(trainer.default_root_dir) / "checkpoints"
        return folder.expanduser().absolute()

    # -- saving -----------------------------------------------------------------------------------------

    def _state(self, trainer: Any, aggregate: Any) -> dict[str, Any]:
        if self.save_weights_only:
            return weights_state(aggregate, trainer.callbacks)
        return checkpoint_state(trainer, aggregate)

    def _save(self, trainer: Any, aggregate: Any, epoch: int, results: dict[str, float]) -> None:
        """Write the top-k file (when it ranks) and ``last.ckpt``; delete files that left the top k last. With
        ``async_save``, the previous background write is waited for first: its outcome decides what is kept, and
        the staging buffers it is writing from are reused for this one.

        Raises:
            CheckpointError: when the previous background write failed, naming its file.
        """
        self._wait_for_writes()
        folder = self.dirpath or self._resolve(trainer)
        step = trainer.progress.global_step
        score: float | None = None
        ranked = self.save_top_k != 0
        if ranked and self.monitor is not None:
            score = monitored_value(self._owner, self.monitor, results)
            ranked = score is not None
            self._checks += score is not None
        name = render(self._owner, self.filename, epoch, step, results) if ranked else None
        path, kept = None, dict(self.best_k_models)
        evicted: list[str] = []
        if name is not None:
            # an epoch's end at the step of the step checkpoint just written: that file is superseded
            same_point = step == self._last_global_step_saved and self._last_path in kept
            replacing = self._last_path if same_point else None
            target = str(folder / f"{name}{EXTENSION}")
            path = target if target == replacing else str(free_path(folder, name, set(kept), self._reserved))
            admitted = admit(kept, path, score, replacing, self.save_top_k, self._ranking)
            if admitted is None:
                path = None
            else:
                kept, evicted = admitted
        collective = _collective(trainer)
        if collective:  # rank 0 decides, from what it sees on disk; every process writes
            path, kept, evicted = trainer.strategy.broadcast((path, kept, evicted), src=0)
        if path is None and not self.save_last:
            return
        previous = (self.best_k_models, self.best_model_path, self.best_model_score, self.last_model_path)
        saved = (self._last_global_step_saved, self._last_path)
        last = folder / f"{self.LAST_NAME}{EXTENSION}"
        self._commit(kept, str(last) if self.save_last else self.last_model_path)
        # before the state is taken: the file written now records itself as the latest save, so a fit resumed from
        # it replaces it when its epoch ends at the same step (as the uninterrupted run does), rather than adding -v1
        self._last_global_step_saved, self._last_path = step, path
        written = {"top_k": False}  # what the write got done: on an error, the bookkeeping is undone up to there
        undo = functools.partial(self._undo, previous, saved, written)
        background = self._background
        if collective and background is not None and not self.save_weights_only:
            background.sharded(trainer, aggregate, path, last if self.save_last else None, evicted, written, undo)
            return
        if collective:
            try:
                write_collectively(
                    trainer, aggregate, path, last if self.save_last else None, self.save_weights_only
                )
            except BaseException:
                self.best_k_models, self.best_model_path, self.best_model_score, self.last_model_path = previous
                self._last_global_step_saved, self._last_path = saved
                raise
            if trainer.is_global_zero:
                for old in evicted:
                    if old != path:
                        remove_checkpoint(Path(old))
            return
        state = self._state(trainer, aggregate)
        if background is not None:  # the training loop pauses only to copy the state into CPU memory
            background.files(state, path, last if self.save_last else None, evicted, written, undo)
            return
        try:
            write_files(state, path, last if self.save_last else None, evicted, written)
        except BaseException as error:
            undo(error)
            raise

    def _undo(
        self,
        previous: tuple[Any, ...],
        saved: tuple[int, str | None],
        written: dict[str, bool],
        error: BaseException,
    ) -> None:
        """A write failed: the files kept are those before it (or, when only ``last.ckpt`` failed, the new top-k
        file is kept and ``last_model_path`` is the previous one)."""
        if written["top_k"]:
            self.last_model_path = previous[3]
            return
        self.best_k_models, self.best_model_path, self.best_model_score, self.last_model_path = previous
        self._last_global_step_saved, self._last_path = saved

    def _wait_for_writes(self) -> None:
        """Wait for the background write in flight, if any.

        Raises:
            CheckpointError: when it failed, naming the file.
        """
        if self._background is not None:
            self._background.wait()

    def _close_writer(self) -> None:
        if self._background is not None:
            self._background.close()
        self._background = None

    @property
    def _reserved(self) -> tuple[str, ...]:
        return (self.LAST_NAME, self.EXCEPTION_NAME)

    @property
    def _ranking(self) -> Mode | None:
        return None if self.monitor is None else self.mode

    def _commit(self, kept: dict[str, float | None], last: str | None) -> None:
        self.best_k_models, self.last_model_path = kept, last
        self.best_model_path, self.best_model_score = best_of(kept, self._ranking)

    # -- state --------------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """The files kept and what they scored, as plain strings and numbers.

        Returns:
            ``{"dirpath", "monitor", "mode", "best_k_models", "best_model_path", "best_model_score",
            "last_model_path", "last_global_step_saved", "last_path"}`` (``last_path``: the top-k file of that
            latest save, or ``None``).
        """
        return {
            "dirpath": None if self.dirpath is None else str(self.dirpath),
            "monitor": self.monitor,
            "mode": self.mode,
            "best_k_models": dict(self.best_k_models),
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
            "last_global_step_saved": self._last_global_step_saved,
            "last_path": self._last_path,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. It is checked against the folder when the fit starts: a state
        from another folder, ``monitor`` or ``mode`` is dropped (with a warning), and files that no longer exist
        are forgotten."""
        self._loaded = dict(state)
        self._commit(dict(state["best_k_models"]), state["last_model_path"])
        self._last_global_step_saved = int(state["last_global_step_saved"])
        self._last_path = state.get("last_path")  # None in a file written before it was saved

    def _reconcile(self, state: dict[str, Any]) -> None:
        saved = state["dirpath"]
        folder = self.dirpath
        same_folder = saved is not None and folder is not None and Path(saved).resolve() == folder.resolve()
        if not same_folder or (state["monitor"], state["mode"]) != (self.monitor, self.mode):
            warnings.warn(
                f"{self._owner}: the checkpoint's ModelCheckpoint state is for dirpath={saved!r}, "
                f"monitor={state['monitor']!r}, mode={state['mode']!r}; its best files are not tracked here",
                stacklevel=3,
            )
            self._commit({}, None)
            return
        self._commit({p: s for p, s in self.best_k_models.items() if is_complete(p)}, self.last_model_path)


def _collective(trainer: Any) -> bool:
    """Whether checkpoints are written by every process together (a strategy with sharded checkpoints)."""
    return bool(getattr(getattr(trainer, "strategy", None), "sharded_checkpoints", False))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
