"""The loop's counters: how far a run has come, saved in checkpoints so a resumed run continues counting."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Progress"]


@dataclass
class Progress:
    """Counters of a fit, in the units their names say.

    Attributes:
        epoch: 0-based index of the epoch running now (after an epoch ends: of the next one). Equals the
            number of epochs completed when no epoch is running.
        batch: training batches consumed in the current epoch (so the 0-based index of the next one).
        step: training batches since the run began, resumes included (the last ``BatchTrained.step``).
        global_step: optimizer steps since the run began (Lightning's ``global_step``; equals ``step`` without
            gradient accumulation). ``max_steps`` counts these.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    global_step: int = 0

    def state_dict(self) -> dict[str, int]:
        """The counters as a dict of ints."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters from :meth:`state_dict`'s output.

        Raises:
            KeyError: when a counter is missing.
        """
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.step, self.global_step = int(state["step"]), int(state["global_step"])
