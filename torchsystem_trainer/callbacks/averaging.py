"""A second set of an aggregate's weights, averaged by ``torch.optim.swa_utils.AveragedModel``: the shared part of
``EMA`` and ``StochasticWeightAveraging`` (not a callback itself).

``AveragedModel`` deep-copies the module it averages. Deep-copying an aggregate would copy its optimizer, its
schedulers and, under DDP, its process-group wrappers; so it is given a small module that holds the aggregate's
parameter and buffer *objects* (:class:`_View`), whose deep copy is exactly the averaged set. That copy is keyed back
to the aggregate's ``state_dict`` names, so the averaged weights are saved, restored and loaded
(``load_weights(..., averaged=True)``) like the aggregate's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.nn import Module, ParameterList
from torch.optim.swa_utils import AveragedModel

__all__ = ["AveragedWeights", "copy_into", "weights_at_fit_end", "weights_of"]


class _View(Module):
    """Holds given parameters and buffers (the objects themselves, not copies), in order."""

    def __init__(self, parameters: list[torch.nn.Parameter], buffers: list[Tensor]) -> None:
        super().__init__()
        self.held = ParameterList(parameters)
        for index, buffer in enumerate(buffers):
            self.register_buffer(f"b{index}", buffer)


class AveragedWeights:
    """An ``AveragedModel`` of an aggregate's parameters (and buffers), keyed by the aggregate's ``state_dict`` names.

    Args:
        aggregate: the module whose weights are averaged (set up on its device).
        use_buffers: average the floating buffers too (BatchNorm statistics; integer buffers such as
            ``num_batches_tracked`` are copied); ``False``: buffers are copied from the aggregate at each update,
            as ``AveragedModel(use_buffers=False)`` does.
        device: where the averaged copy lives; ``None``: the aggregate's device.
        multi_avg_fn: ``AveragedModel``'s averaging function (``get_ema_multi_avg_fn(decay)``), ``None`` for the
            equal-weight average of SWA.

    Attributes:
        model: the ``AveragedModel``; ``model.n_averaged`` counts the updates.
        count: the same count, on the host.
    """

    def __init__(
        self,
        aggregate: Module,
        *,
        use_buffers: bool,
        device: torch.device | None = None,
        multi_avg_fn: Callable[..., None] | None = None,
    ) -> None:
        persistent = aggregate.state_dict(keep_vars=True)
        parameters = [parameter for _, parameter in aggregate.named_parameters()]
        buffers = [buffer for name, buffer in aggregate.named_buffers() if name in persistent]
        self._view = _View(parameters, buffers)
        self.model = AveragedModel(self._view, device=device, multi_avg_fn=multi_avg_fn, use_buffers=use_buffers)
        self.use_buffers = use_buffers
        self.count = 0
        copies = [*self.model.module.parameters(), *self.model.module.buffers()]
        self._live: list[Tensor] = [*parameters, *buffers]
        self._copies: list[Tensor] = copies
        index = {id(tensor): position for position, tensor in enumerate(self._live)}
        self.keys = {key: index[id(value)] for key, value in persistent.items() if id(value) in index}
        # what the averaged state of the aggregate swaps and copies: parameters, and buffers when they are averaged
        self._weights = list(range(len(parameters) + (len(buffers) if use_buffers else 0)))
        averaged = [i for i in self._weights if torch.is_floating_point(self._live[i]) or self._live[i].is_complex()]
        self._copied = [i for i in range(len(self._live)) if i not in set(averaged)]
        self._groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i in averaged:
            self._groups.setdefault((copies[i].device, copies[i].dtype), []).append(i)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One ``AveragedModel.update_parameters`` step with its ``multi_avg_fn``, without reading ``n_averaged``
        on the host: the first update copies, later ones average (the same arithmetic as ``update_parameters``,
        which compares ``n_averaged`` on the host at every call, a device synchronisation per step on a GPU)."""
        live, copies = self._live, self._copies
        if self.count == 0:
            for i in range(len(live)):
                copies[i].copy_(live[i])
        else:
            average = self.model.multi_avg_fn
            assert average is not None
            for indexes in self._groups.values():
                average(
                    [copies[i] for i in indexes],
                    [live[i].to(copies[i].device) for i in indexes],
                    self.model.n_averaged,
                )
            for i in self._copied:
                copies[i].copy_(live[i])
        self.model.n_averaged += 1
        self.count += 1

    def update(self) -> None:
        """``AveragedModel.update_parameters`` with the aggregate's current weights (reads ``n_averaged`` on the
        host: for per-epoch updates)."""
        self.model.update_parameters(self._view)
        self.count += 1

    def state(self) -> dict[str, Tensor]:
        """The averaged weights, keyed as the aggregate's ``state_dict`` (the tensors themselves, not copies)."""
        return {key: self._copies[index] for key, index in self.keys.items()}

    @torch.no_grad()
    def load(self, weights: Mapping[str, Tensor], count: int) -> None:
        """Put back :meth:`state`'s output and the number of updates.

        Raises:
            KeyError: when a key of the aggregate is missing from ``weights``.
        """
        for key, index in self.keys.items():
            self._copies[index].copy_(weights[key])
        self.count = int(count)
        self.model.n_averaged.fill_(self.count)

    @torch.no_grad()
    def copy_to_aggregate(self) -> None:
        """Give the aggregate the averaged parameters (and averaged buffers, when ``use_buffers``)."""
        for i in self._weights:
            self._live[i].copy_(self._copies[i])

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the aggregate's parameters (and averaged buffers) with the averaged ones; a second call undoes
        the first, bit for bit."""
        for i in self._weights:
            live, copy = self._live[i], self._copies[i]
            kept = live.clone()
            live.copy_(copy)
            copy.copy_(kept)


def weights_of(aggregate: Module, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Copies of the aggregate's ``state_dict`` tensors (on ``device``, default their own)."""
    return {
        key: value.detach().to(device if device is not None else value.device, copy=True)
        for key, value in aggregate.state_dict().items()
        if isinstance(value, Tensor)
    }


def copy_into(target: dict[str, Tensor], aggregate: Module) -> None:
    """Overwrite ``target`` (what :func:`weights_of` returned) with the aggregate's current tensors, in place."""
    with torch.no_grad():
        for key, value in aggregate.state_dict().items():
            if key in target:
                target[key].copy_(value)



class _FitEndWeights:
    """The snapshot :func:`weights_at_fit_end` took for the latest ``FitEnded`` event it was asked about."""

    event: object = None
    weights: dict[str, Tensor] = {}  # noqa: RUF012  # replaced, never mutated


def weights_at_fit_end(event: object) -> dict[str, Tensor]:
    """Copies of the weights a fit ended with, taken at the first call for this ``FitEnded`` event, before any
    callback replaced them: the callbacks that give the aggregate other weights as a fit ends (``EMA``,
    ``StochasticWeightAveraging``, ``EarlyStopping(restore_best_weights=True)``) all keep this one set as the trained
    weights, whatever their order, so a fit resumed from a checkpoint written then continues from them.

    Args:
        event: the ``FitEnded`` event (its ``aggregate``).

    Returns:
        ``{state_dict key: tensor}``, shared by every caller for the same event (not to be changed in place).
    """
    if _FitEndWeights.event is not event:
        _FitEndWeights.weights = weights_of(event.aggregate)  # type: ignore[attr-defined]
        _FitEndWeights.event = event
    return _FitEndWeights.weights
