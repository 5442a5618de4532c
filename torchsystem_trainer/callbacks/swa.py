"""``StochasticWeightAveraging``: average the weights of the last epochs (Izmailov et al., "Averaging Weights Leads
to Wider Optima and Better Generalization", UAI 2018), as Lightning's callback of that name, on torch's
``swa_utils``: ``AveragedModel`` (equal-weight average), ``SWALR`` and ``update_bn``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.swa_utils import SWALR, update_bn
from typing_extensions import override

from torchsystem_trainer.callbacks.averaging import AveragedWeights, weights_at_fit_end
from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.events import EpochStarted, FitEnded, FitStarted, Trained
from torchsystem_trainer.strategies.optimizer_step import find_optimizers, find_schedulers

__all__ = ["StochasticWeightAveraging"]

_KEEPS_AVERAGE = ("completed", "max_steps", "max_time", "stopped")
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


class StochasticWeightAveraging(Callback):
    """From epoch ``swa_start`` on, anneal the learning rate to ``swa_lrs`` (``SWALR``, stepped at each epoch's end)
    and add the weights at the end of each training phase to an equal-weight average (``AveragedModel``); when the
    fit ends by a stop or a limit, give the aggregate the averaged weights and recompute its BatchNorm statistics
    with one pass over the training loader (``update_bn``; nothing when it has no BatchNorm).

    ``swa_epoch_start`` follows Lightning: an int ``n >= 1`` starts at the n-th epoch (0-based epoch ``n - 1``); a
    float in ``[0, 1]`` at the ``int(swa_epoch_start * max_epochs)``-th (so ``0.8`` of 10 epochs averages the
    weights after epochs 7, 8 and 9). Epochs are the aggregate's (``max_epochs`` is the total it reaches).

    The aggregate must hold exactly one optimizer. From ``swa_start`` on, ``SWALR`` sets its learning rate at each
    epoch's end; a ``LearningRateScheduler`` callback on that optimizer stops stepping then (Lightning swaps its
    scheduler configuration for ``SWALR``), but a scheduler the aggregate steps itself keeps stepping too (a warning
    says so), as both change the same learning rate.

    The average, the ``SWALR`` state and the epoch of the last update are saved in checkpoints (the averaged
    weights as ``averaged_weights``, which ``load_weights(..., averaged=True)`` loads), so a resumed fit ends
    bit-identical to the uninterrupted one. After the fit took the average, the trained weights are kept in the
    state too, so that a fit resumed from a checkpoint written then continues from them. Under several processes
    the BatchNorm statistics are those rank 0 computed on its shard, broadcast to every process.

    Args:
        swa_lrs: the SWA learning rate: one float for every parameter group, or one per group (> 0).
        swa_epoch_start: see above.
        annealing_epochs: epochs of ``SWALR``'s annealing from the current learning rate to ``swa_lrs`` (>= 0).
        annealing_strategy: ``"cos"`` or ``"linear"`` (``SWALR``'s ``anneal_strategy``).
        device: where the averaged copy lives (Lightning's default ``"cpu"``); ``None``: with the weights.

    Attributes:
        swa_start: the 0-based first epoch averaged, once a fit has started.
        averaged: the :class:`~torchsystem_trainer.callbacks.averaging.AveragedWeights` (its ``model`` is the
            ``AveragedModel``); ``None`` before a fit starts.
        scheduler: the ``SWALR``, from ``swa_start`` on.

    Raises:
        ValueError: for an invalid argument (naming it, the value and what is valid); at ``FitStarted``, for an
            aggregate without exactly one optimizer, a float ``swa_epoch_start`` without ``max_epochs`` (or with -1), or
            ``swa_lrs`` of another length than the optimizer's parameter groups.
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        device: str | torch.device | None = "cpu",
    ) -> None:
        owner = "StochasticWeightAveraging"
        rates = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not rates or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0 for r in rates):
            raise ValueError(f"{owner}: swa_lrs={swa_lrs!r} is invalid; valid: a float > 0 or a list of them")
        integer = isinstance(swa_epoch_start, int) and not isinstance(swa_epoch_start, bool)
        if not (integer and swa_epoch_start >= 1) and not (
            isinstance(swa_epoch_start, float) and 0.0 <= swa_epoch_start <= 1.0
        ):
            raise ValueError(
                f"{owner}: swa_epoch_start={swa_epoch_start!r} is invalid; valid: an int >= 1 (the n-th epoch) or a "
                f"float in [0, 1] (that fraction of max_epochs)"
            )
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise ValueError(f"{owner}: annealing_epochs={annealing_epochs!r} is invalid; valid: an int >= 0")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"{owner}: annealing_strategy={annealing_strategy!r} is invalid; valid: 'cos', 'linear'")
        self.swa_lrs = swa_lrs
        self.swa_epoch_start = swa_epoch_start
        self.annealing_epochs = annealing_epochs
        self.annealing_strategy = annealing_strategy
        self.device = None if device is None else torch.device(device)
        self.swa_start: int | None = None
        self.averaged: AveragedWeights | None = None
        self.scheduler: SWALR | None = None
        self._optimizer: Optimizer | None = None
        self._last_update_epoch = -1
        self._trained: dict[str, Tensor] | None = None
        self._loaded: dict[str, Any] | None = None

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Check the aggregate, resolve ``swa_start``, create the average; put back a restored state.

        Raises:
            ValueError: see the class.
        """
        trainer, aggregate = event.trainer, event.aggregate
        loaded = self._loaded if resumed(trainer) else None
        self._loaded = None
        optimizers = find_optimizers(aggregate)
        if len(optimizers) != 1:
            raise ValueError(
                f"StochasticWeightAveraging needs an aggregate with exactly one optimizer; "
                f"{type(aggregate).__name__} has {len(optimizers)}"
            )
        self._optimizer = optimizer = optimizers[0]
        rates = self.swa_lrs if isinstance(self.swa_lrs, list) else [self.swa_lrs] * len(optimizer.param_groups)
        if len(rates) != len(optimizer.param_groups):
            raise ValueError(
                f"StochasticWeightAveraging: swa_lrs={self.swa_lrs!r} has {len(rates)} rates for "
                f"{len(optimizer.param_groups)} parameter groups; valid: one float, or one per group"
            )
        self.swa_start = self._resolve_start(trainer.max_epochs)
        driven = [getattr(c, "scheduler", None) for c in trainer.callbacks if c is not self]  # LearningRateScheduler
        own = [s for s in find_schedulers(aggregate) if not any(s is d for d in driven)]
        if own:
            warnings.warn(
                f"StochasticWeightAveraging: {type(aggregate).__name__} holds its own scheduler(s) "
                f"{[type(s).__name__ for s in own]}; from epoch {self.swa_start} SWALR sets the learning rate at "
                f"each epoch's end, and a scheduler the aggregate steps itself still changes it",
                stacklevel=2,
            )
        self.averaged = AveragedWeights(aggregate, use_buffers=False, device=self.device)
        self.scheduler, self._last_update_epoch, self._trained = None, -1, None
        if loaded is None:
            return
        if loaded["averaged_weights"] is not None:
            self.averaged.load(loaded["averaged_weights"], loaded["n_averaged"])
        self._last_update_epoch = int(loaded["last_update_epoch"])
        if loaded["scheduler"] is not None:
            self._start_scheduler()
            assert self.scheduler is not None
            self.scheduler.load_state_dict(loaded["scheduler"])
        if loaded.get("trained_weights") is not None:
            aggregate.load_state_dict(loaded["trained_weights"], strict=False)

    def on_epoch_started(self, event: EpochStarted) -> None:
        """Start ``SWALR`` at the first SWA epoch."""
        if self.scheduler is None and self.swa_start is not None and event.epoch >= self.swa_start:
            self._start_scheduler()

    def on_trained(self, event: Trained) -> None:
        """Add this epoch's weights to the average and step ``SWALR`` (SWA epochs only)."""
        if self.swa_start is None or event.epoch < self.swa_start or event.epoch <= self._last_update_epoch:
            return
        assert self.averaged is not None and self.scheduler is not None
        self.averaged.update()
        self.scheduler.step()
        self._last_update_epoch = event.epoch

    def on_fit_ended(self, event: FitEnded) -> None:
        """Give the aggregate the averaged weights and recompute BatchNorm statistics (a fit ended by a stop or a
        limit, with at least one epoch averaged)."""
        if event.reason not in _KEEPS_AVERAGE or self.averaged is None or self.averaged.count == 0:
            return
        trainer, aggregate = event.trainer, event.aggregate
        self._trained = weights_at_fit_end(event)  # before any callback replaced them
        self.averaged.copy_to_aggregate()
        loader = trainer.train_dataloader
        if loader is None:
            return
        training = aggregate.training
        strategy = trainer.strategy
        with torch.no_grad(), strategy.forward_context():
            update_bn(_inputs(loader, strategy.batch_to_device), aggregate)
        aggregate.train(training)
        if strategy.world_size > 1:  # every process takes rank 0's statistics
            with torch.no_grad():
                for module in aggregate.modules():
                    if isinstance(module, _BATCH_NORMS):
                        for buffer in module.buffers():
                            buffer.copy_(strategy.broadcast(buffer, 0))

    def _resolve_start(self, max_epochs: int | None) -> int:
        if isinstance(self.swa_epoch_start, float):
            if max_epochs is None or max_epochs == -1:  # -1: no epoch limit (Lightning's), nothing to take a part of
                raise ValueError(
                    f"StochasticWeightAveraging: swa_epoch_start={self.swa_epoch_start!r} is a fraction of "
                    f"max_epochs, but the Trainer has max_epochs={max_epochs!r} (no epoch limit); give max_epochs or "
                    f"an int swa_epoch_start"
                )
            return max(int(self.swa_epoch_start * max_epochs) - 1, 0)
        return max(self.swa_epoch_start - 1, 0)

    def _start_scheduler(self) -> None:
        assert self._optimizer is not None
        self.scheduler = SWALR(
            self._optimizer,
            swa_lr=self.swa_lrs,  # type: ignore[arg-type]  # torch accepts one rate per group too
            anneal_epochs=self.annealing_epochs,
            anneal_strategy=self.annealing_strategy,
        )

    # -- state ------------------------------------------------------------------------------------------

    def averaged_weights(self) -> dict[str, Tensor] | None:
        """The averaged weights keyed as the aggregate's ``state_dict`` (``None`` before the first SWA epoch ends)."""
        if self.averaged is None or self.averaged.count == 0:
            return None
        return self.averaged.state()

    @override
    def state_dict(self) -> dict[str, Any]:
        """The average's part of a checkpoint.

        Returns:
            ``{"swa_start", "n_averaged", "last_update_epoch", "averaged_weights": {key: tensor} | None,
            "scheduler": SWALR state | None, "trained_weights": {key: tensor} | None}``.
        """
        return {
            "swa_start": self.swa_start,
            "n_averaged": 0 if self.averaged is None else self.averaged.count,
            "last_update_epoch": self._last_update_epoch,
            "averaged_weights": self.averaged_weights(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "trained_weights": self._trained,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep :meth:`state_dict`'s output for the next fit's start.

        Raises:
            KeyError: when a field is missing.
        """
        self._loaded = {
            "averaged_weights": state["averaged_weights"],
            "n_averaged": int(state["n_averaged"]),
            "last_update_epoch": int(state["last_update_epoch"]),
            "scheduler": state["scheduler"],
            "trained_weights": state.get("trained_weights"),
        }


def _inputs(loader: Any, to_device: Any) -> Iterator[Any]:
    """The inputs of each batch on the device, for ``update_bn`` (a tensor batch, or a tuple or list's first
    element)."""
    for batch in loader:
        batch = to_device(batch)
        if isinstance(batch, (tuple, list)):
            yield batch[0]
        elif isinstance(batch, Tensor):
            yield batch
        else:
            raise TypeError(
                f"StochasticWeightAveraging: update_bn needs batches that are a tensor or a tuple/list whose first "
                f"element is the inputs; got a {type(batch).__name__}"
            )
