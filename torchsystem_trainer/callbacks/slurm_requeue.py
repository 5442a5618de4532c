"""``SLURMRequeue``: before a Slurm job's time limit, stop at a step boundary, checkpoint, and put the job back in the
queue, so that the same script resumes it with ``fit(ckpt_path="last")`` (Lightning's ``SLURMEnvironment(
auto_requeue=True)``).

Slurm sends a signal a chosen time before the limit when the job asks for one (``sbatch --signal=USR1@120``: SIGUSR1
to every task 120 s before). Lightning checkpoints inside the signal handler and requeues from there; a handler runs
between any two bytecodes, mid optimizer step or mid backward, and its issue #21406 reports handlers that never
finish. Here the handler only asks the loop to stop, as ``SIGTERM`` does (:class:`~torchsystem_trainer.checkpoint.
StopSignals`): the current step finishes, the fit ends ``"interrupted"``, ``ModelCheckpoint`` writes ``last.ckpt``
(and waits for any background write), and only then, after every checkpoint callback, global rank 0 runs
``scontrol requeue <job>`` (``<array job>_<task>`` for a job array, Lightning's #15022). The recipe is in
docs/distributed.md ("Fault tolerance").
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from collections.abc import Mapping, Sequence

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.checkpoint import StopSignals
from torchsystem_trainer.events import FitEnded, FitStarted

__all__ = ["SLURMRequeue", "slurm_job_id"]

logger = logging.getLogger(__name__)
REQUEUE_TIMEOUT_S = 60.0
"""How long ``scontrol requeue`` may take before it is given up on (with a warning)."""


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The job to requeue: ``<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`` in a job array (requeueing
    ``SLURM_JOB_ID`` there would requeue the whole array), else ``SLURM_JOB_ID``; ``None`` outside Slurm."""
    env = os.environ if environ is None else environ
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


class SLURMRequeue(Callback):
    """On Slurm's warning signal, stop the fit cleanly with a checkpoint, then requeue the job (see the module
    docstring). Needs a ``ModelCheckpoint`` (which writes ``last.ckpt`` when a signal stops a fit) and a script that
    calls ``fit(..., ckpt_path="last")``. Runs on every process (each installs the handler; Slurm signals every
    task, and the processes agree to stop at the same step); global rank 0 requeues.

    Args:
        requeue_signal: the signal Slurm sends before the time limit (``--signal=USR1@<seconds>``).
        requeue: run the requeue command; ``False`` only stops and checkpoints (when something else requeues, such
            as ``submitit``).
        command: the command, followed by the job id.

    Attributes:
        requeued: the job id requeued by the last fit, or ``None``.

    Raises:
        ValueError: for a ``requeue_signal`` this platform does not have.
    """

    runs_after_checkpoints = True  # the Trainer runs it after ModelCheckpoint: requeue once last.ckpt is written

    def __init__(
        self,
        requeue_signal: int = getattr(signal, "SIGUSR1", 10),
        requeue: bool = True,
        command: Sequence[str] = ("scontrol", "requeue"),
    ) -> None:
        if requeue_signal not in set(signal.valid_signals()):
            raise ValueError(f"SLURMRequeue: requeue_signal={requeue_signal!r} is not a signal of this platform")
        self.requeue_signal = int(requeue_signal)
        self.requeue = bool(requeue)
        self.command = tuple(command)
        self.requeued: str | None = None
        self._signals: StopSignals | None = None

    def on_fit_started(self, event: FitStarted) -> None:
        """Handle the requeue signal for the fit's duration: the loop stops at the next step boundary."""
        self.requeued = None
        self._signals = StopSignals(event.trainer.loop.on_signal, signals=(self.requeue_signal,)).__enter__()

    def on_fit_ended(self, event: FitEnded) -> None:
        """Put the previous handler back; when the requeue signal stopped the fit, requeue from global rank 0 (the
        checkpoint callbacks have run: ``last.ckpt`` is written)."""
        signals, self._signals = self._signals, None
        if signals is None:
            return
        signals.__exit__(None, None, None)
        if signals.received != self.requeue_signal or event.reason != "interrupted":
            return
        if not self.requeue or not event.trainer.is_global_zero:
            return
        self.requeued = self._requeue()

    def _requeue(self) -> str | None:
        job = slurm_job_id()
        if job is None:
            warnings.warn(
                f"SLURMRequeue: signal {signal.Signals(self.requeue_signal).name} stopped the fit, but this is not a "
                "Slurm job (no SLURM_JOB_ID): nothing was requeued",
                stacklevel=3,
            )
            return None
        command = [*self.command, job]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=REQUEUE_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            warnings.warn(
                f"SLURMRequeue: {' '.join(command)!r} failed: {error!r}; the job was not requeued", stacklevel=3
            )
            return None
        if done.returncode != 0:
            warnings.warn(
                f"SLURMRequeue: {' '.join(command)!r} exited with {done.returncode}: {done.stderr.strip()[-500:]}; the "
                "job was not requeued",
                stacklevel=3,
            )
            return None
        logger.warning("SLURMRequeue: checkpoint written, job %s requeued", job)
        return job
