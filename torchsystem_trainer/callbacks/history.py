"""``History``: every epoch's results of a fit, readable after it (Keras' ``History``, for this Trainer)."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.events import FitStarted, Iterated

__all__ = ["History"]


class History(Callback):
    """Records ``Iterated.results`` at the end of every epoch.

    Each record is ``{"epoch": <0-based epoch>, "<phase>/<name>": value, ...}``: the flat results of the phases
    that ran in that epoch (an epoch without validation has no ``"validation/..."`` keys). A fit starts a new
    history, unless it resumes from a checkpoint, whose history this one continues.

    Example:
        >>> history = History()
        >>> Trainer(callbacks=[history], max_epochs=3).fit(aggregate, loaders)  # doctest: +SKIP
        >>> history["validation/loss"]  # doctest: +SKIP
        [0.69, 0.61, 0.58]

    Attributes:
        epochs: one record per epoch, in order.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._restored = False

    def on_fit_started(self, event: FitStarted) -> None:
        """Start an empty history, unless a checkpoint was just restored into this one."""
        if not (self._restored and resumed(event.trainer)):
            self.epochs = []
        self._restored = False

    def on_iterated(self, event: Iterated) -> None:
        """Append the epoch's record."""
        self.epochs.append({"epoch": event.epoch, **event.results})

    def keys(self) -> list[str]:
        """Every result key recorded in some epoch (``"epoch"`` excluded), sorted.

        Returns:
            The keys, e.g. ``["train/loss", "validation/loss"]``.
        """
        return sorted({key for record in self.epochs for key in record if key != "epoch"})

    def series(self, key: str) -> list[tuple[int, float]]:
        """The ``(epoch, value)`` pairs of ``key``, for the epochs that hold it.

        Args:
            key: a result key, ``"<phase>/<name>"``.

        Returns:
            The pairs, in epoch order.

        Raises:
            KeyError: when no epoch holds ``key``, listing the keys that exist.
        """
        pairs = [(int(record["epoch"]), float(record[key])) for record in self.epochs if key in record]
        if not pairs:
            raise KeyError(f"History: no epoch has {key!r}; recorded keys: {self.keys() or 'none'}")
        return pairs

    def __getitem__(self, key: str) -> list[float]:
        """The values of ``key``, one per epoch that holds it (see :meth:`series` for their epochs).

        Raises:
            KeyError: when no epoch holds ``key``, listing the keys that exist.
        """
        return [value for _, value in self.series(key)]

    def __contains__(self, key: object) -> bool:
        return any(key in record for record in self.epochs) and key != "epoch"

    def __len__(self) -> int:
        """The number of epochs recorded."""
        return len(self.epochs)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The records, as plain data.

        Returns:
            ``{"epochs": [record, ...]}``.
        """
        return {"epochs": [dict(record) for record in self.epochs]}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next fit continues this history.

        Raises:
            KeyError: when ``"epochs"`` is missing.
        """
        self.epochs = [dict(record) for record in state["epochs"]]
        self._restored = True
