"""What a phase accumulates over its batches: the sample-weighted loss, the metrics and the aggregate's logged
values (:mod:`.logged`).

All stay on the device for the whole phase; the host reads them once, when the phase ends (under several
processes, once more when the aggregate logged values: after checking that every process logged the same names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from torchsystem_trainer.trainer.logged import LoggedValues

if TYPE_CHECKING:  # torchmetrics imports scipy and PIL (over a second); loaded only when metrics are given
    from torchmetrics import Metric, MetricCollection

__all__ = ["PhaseResults", "build_metrics"]

_FOLD = 1024  # batch losses kept before they are folded into one running sum


def build_metrics(metrics: Any) -> MetricCollection | None:
    """Turn the Trainer's ``metrics`` argument into a ``MetricCollection`` (a template, cloned per phase).

    Args:
        metrics: ``None``, a torchmetrics ``Metric``, a ``MetricCollection``, or ``{name: Metric}``.

    Returns:
        The collection, or ``None``.

    Raises:
        TypeError: for anything else, or a dict value that is not a ``Metric``.
        ValueError: for a metric named ``"loss"``, which the Trainer reports itself.
    """
    if metrics is None:
        return None
    from torchmetrics import Metric, MetricCollection

    if isinstance(metrics, MetricCollection):
        collection = metrics
    elif isinstance(metrics, Metric):
        collection = MetricCollection([metrics])
    elif isinstance(metrics, dict):
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(f"metrics[{name!r}] is a {type(metric).__name__}, not a torchmetrics Metric")
        collection = MetricCollection(dict(metrics))
    else:
        raise TypeError(
            f"metrics is a {type(metrics).__name__}; give a torchmetrics Metric, a MetricCollection or {{name: Metric}}"
        )
    if "loss" in collection.keys(keep_base=False):
        raise ValueError("metrics has a metric named 'loss'; the Trainer reports the loss itself: rename it")
    return collection


class PhaseResults:
    """The running results of one phase.

    Args:
        metrics: this phase's metrics (already on the device), or ``None``.
        device: where the phase's tensors live (for a process that saw no batch but joins the reduction).
        phase: the phase's name (``"train"``, ``"validation"``, ``"test"``), for the keys of logged values.

    Attributes:
        logged: the sink of the aggregate's ``log`` calls in this phase (:class:`~.logged.LoggedValues`).
    """

    def __init__(
        self, metrics: MetricCollection | None, device: torch.device | str = "cpu", phase: str = "train"
    ) -> None:
        self.metrics = metrics
        self._update_metrics = None if metrics is None else _updater(metrics)
        self.device = torch.device(device)
        self.losses: list[Tensor] = []
        self.sizes: list[int] = []
        self.total: Tensor | None = None  # [] float32, the folded sum of loss * batch size
        self.count = 0  # samples seen
        names = () if metrics is None else [str(name) for name in metrics.keys(keep_base=False)]
        self.logged = LoggedValues(phase, self.device, names, self._log_started)

    def _log_started(self) -> None:
        """The phase's first ``Aggregate.log`` call: from now on :meth:`update` also ends the batch's logged values.
        An instance attribute shadows the method, so the phase loop, which looks ``results.update`` up per batch,
        calls the logging variant from this batch on, and a phase whose aggregate never logs pays nothing."""
        self.update = self._update_and_log  # type: ignore[method-assign]

    def _update_and_log(self, loss: Tensor, size: int, predictions: Any, targets: Any) -> None:
        PhaseResults.update(self, loss, size, predictions, targets)
        self.logged.end_batch(size)

    def update(self, loss: Tensor, size: int, predictions: Any, targets: Any) -> None:
        """Record one batch: ``loss`` ``[]`` (its mean over the batch, without a graph: detached, or made
        under inference mode; it is kept until the phase's losses are folded), ``size`` samples, and the metric inputs.

        Raises:
            ValueError: when metrics are configured and the batch has no targets.
        """
        self.losses.append(loss)
        self.sizes.append(size)
        self.count += size
        if len(self.losses) >= _FOLD:
            self._fold()
        if self._update_metrics is not None:
            if targets is None:
                raise ValueError(
                    "metrics need targets: make batches (inputs, targets) tuples, or dicts with a 'targets' key"
                )
            self._update_metrics(predictions, targets)

    def _fold(self) -> None:
        losses = torch.stack(self.losses).float()
        sizes = torch.tensor(self.sizes, dtype=losses.dtype)
        if losses.is_cuda:  # a copy from pinned memory is asynchronous: no host-device sync every _FOLD batches
            sizes = sizes.pin_memory()
        sizes = sizes.to(losses.device, non_blocking=True)
        folded = torch.dot(losses, sizes)
        self.total = folded if self.total is None else self.total + folded
        self.losses.clear()
        self.sizes.clear()

    def loss_sum(self) -> Tensor | None:
        """``[]`` the sum of loss x batch size over the phase so far, on the device; ``None`` before any batch."""
        if self.losses:
            self._fold()
        return self.total

    def compute(self, reduce: Any = None) -> dict[str, float]:
        """The phase's results: ``"loss"`` (sample-weighted mean), every metric, then every value the aggregate
        logged with ``on_epoch=True`` (by name), as floats.

        Args:
            reduce: ``(tensor, op="sum") -> tensor`` reducing across processes (the strategy's ``all_reduce``), or
                ``None`` for one process.

        Returns:
            ``{"loss": float, <metric>: float, ..., <logged name>: float, ...}``; empty when the phase saw no batch.

        Raises:
            ValueError: when a metric computes a tensor with more than one element.
            RuntimeError: under several processes, when they did not all log the same names with the same
                ``reduce_fx`` in the phase (raised on every process).
        """
        total = self.loss_sum()
        if total is None and reduce is not None:  # no batch here, but the other processes count on this one
            total = torch.zeros((), device=self.device)
        results: dict[str, float] = {}
        logged: dict[str, float] = {}
        if total is not None:
            pair = torch.stack([total, torch.tensor(float(self.count), dtype=total.dtype, device=total.device)])
            series = self.logged.epoch_series() if self.logged.series else []
            if reduce is not None:
                head = reduce(torch.cat([pair, self.logged.layout(series, pair.dtype)])).tolist()
                loss_sum, count = head[:2]
                _check_layout(head[2:])
                logged = self._reduce_logged(series, reduce) if series else {}
            elif series:  # one read for the loss and the logged values
                sums, maxima = self.logged.parts(series)
                pieces = [part for part in (pair, sums, maxima) if part is not None]
                values = torch.cat(pieces).tolist()
                loss_sum, count = values[:2]
                split = 2 + (0 if sums is None else sums.numel())
                logged = self.logged.decode(series, values[2:split], values[split:])
            else:
                loss_sum, count = pair.tolist()
            if not count:  # no process saw a sample: no results (torchmetrics would compute a default 0.0)
                return results
            results["loss"] = loss_sum / count
        if self.metrics is not None and total is not None:
            for name, value in self.metrics.compute().items():
                tensor = torch.as_tensor(value)
                if tensor.numel() != 1:
                    raise ValueError(
                        f"metric {name!r} computed a tensor of shape {list(tensor.shape)}; results hold scalars "
                        "(for per-class metrics choose an average, e.g. average='macro')"
                    )
                results[name] = float(tensor)
        if total is not None:  # in the order the names were first logged
            results.update({name: logged[name] for name in self.logged.series if name in logged})
        return results

    def _reduce_logged(self, series: list[Any], reduce: Any) -> dict[str, float]:
        """The logged values reduced across processes (which agree on the layout): a ``sum`` collective, a ``max``
        one (``min`` as the max of negated values), then one read."""
        sums, maxima = self.logged.parts(series)
        reduced = [reduce(sums) if sums is not None else None, reduce(maxima, "max") if maxima is not None else None]
        values = torch.cat([part.to(self.device) for part in reduced if part is not None]).tolist()
        split = 0 if sums is None else sums.numel()
        return self.logged.decode(series, values[:split], values[split:])

    def state_dict(self) -> dict[str, Any]:
        """What the phase has accumulated so far, exactly: the batch losses not yet folded (stacked, unchanged),
        their sizes, the folded sum, the sample count, and every metric's state. Reading it changes nothing (no
        folding), so a run that saves mid-phase sums its losses in the same order as one that does not, and the
        resumed phase's ``loss`` is bit-identical. Called when a checkpoint is written, never per step.

        Returns:
            ``{"losses": [n] tensor or None, "sizes": [int], "total": [] tensor or None, "count": int,
            "metrics": {...} or None}`` (see :func:`metric_states`).
        """
        return {
            "losses": torch.stack(self.losses) if self.losses else None,
            "sizes": list(self.sizes),
            "total": self.total,
            "count": self.count,
            "metrics": None if self.metrics is None else metric_states(self.metrics),
            "logged": self.logged.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue from :meth:`state_dict`'s output: tensors go to this phase's device.

        Args:
            state: what :meth:`state_dict` returned.
            strict: raise when the saved metrics are not this phase's; with ``False`` the loss is restored and the
                metrics start empty instead.

        Raises:
            KeyError: when a field is missing.
            ValueError: (``strict``) when the saved metrics are not this phase's (other names or states, or metrics
                on one side only), naming them; nothing changes then.
        """
        device = self._device()
        if self.metrics is not None and state["metrics"] is not None:
            try:
                load_metric_states(self.metrics, state["metrics"])
            except ValueError:
                if strict:
                    raise
        elif strict and (self.metrics is not None or state["metrics"] is not None):
            raise ValueError(
                "the checkpoint's phase has metrics and this one has none, or the other way round (the Trainer's "
                "metrics changed)"
            )
        self.logged.device = device
        logged = state.get("logged")  # absent from a checkpoint written before Aggregate.log existed
        self.logged.load_state_dict(logged if logged is not None else {"series": []})
        losses = state["losses"]
        self.losses = [] if losses is None else list(losses.to(device).unbind(0))
        self.sizes = [int(size) for size in state["sizes"]]
        self.total = None if state["total"] is None else state["total"].to(device)
        self.count = int(state["count"])

    def _device(self) -> torch.device:
        if self.metrics is not None:
            for metric in _metrics_in(self.metrics).values():
                return metric.device  # type: ignore[no-any-return]
        for tensor in (*self.losses, self.total):
            if tensor is not None:
                return tensor.device
        return self.device  # a fresh phase's (a resumed run's on a GPU: the saved losses go there, not to the CPU)

    def reset(self) -> None:
        """Forget everything, for the next epoch (the next ``log`` call switches the logged values on again)."""
        self.losses.clear()
        self.sizes.clear()
        self.total = None
        self.count = 0
        if self.metrics is not None:
            self.metrics.reset()
        self.logged.reset()
        self.__dict__.pop("update", None)


def _check_layout(layout: list[float]) -> None:
    """Raise on every process when the processes did not log the same names (see ``LoggedValues.layout``)."""
    processes, *sums = layout
    for index in range(0, len(sums), 2):
        total, squares = sums[index], sums[index + 1]
        if total * total != processes * squares:
            raise RuntimeError(
                "Aggregate.log: the processes did not log the same names (with on_epoch=True and the same "
                "reduce_fx) in this phase; under a data-parallel strategy every process must log every name it "
                "reduces, so that one collective combines them"
            )


def _updater(collection: MetricCollection) -> Any:
    """The per-batch update of ``collection``: its only metric's own ``update`` when it holds one (the same
    result without the collection's per-call keyword filtering and compute-group bookkeeping, about 20 us a
    batch on a CPU), else the collection's."""
    members = list(collection.values(copy_state=False))
    return members[0].update if len(members) == 1 else collection.update


def _metrics_in(collection: MetricCollection) -> dict[str, Metric]:
    """Every ``Metric`` of the collection by module name, wrapped child metrics included."""
    from torchmetrics import Metric  # a collection exists, so torchmetrics is imported already

    return {name: module for name, module in collection.named_modules() if isinstance(module, Metric) and name}


def metric_states(collection: MetricCollection) -> dict[str, Any]:
    """The states of every metric in ``collection`` (torchmetrics' public ``metric_state``: the registered states)
    and their update counts (``update_count``), as plain data.

    Returns:
        ``{"metrics": {module name: {"states": {state: tensor or [tensors]}, "update_count": int}}}``.
    """
    return {
        "metrics": {
            name: {"states": dict(metric.metric_state), "update_count": int(metric.update_count)}
            for name, metric in _metrics_in(collection).items()
        },
    }


def load_metric_states(collection: MetricCollection, state: dict[str, Any]) -> None:
    """Put :func:`metric_states`' output back into ``collection`` (a clone of the same metrics), on its devices.

    Each metric is reset, then its states are set by name (they are its attributes) and its update count restored.
    A collection's compute groups are not restored: its next update finds them again (torchmetrics merges metrics
    whose states are equal after an update, and the restored states of one group's metrics are equal).

    Raises:
        ValueError: when the metrics or their states differ from the saved ones, naming them; nothing changes then.
        RuntimeError: for a torchmetrics whose ``Metric`` keeps its update count elsewhere (see
            ``_check_update_count``); nothing changes then.
    """
    metrics, saved = _metrics_in(collection), state["metrics"]
    problems = [f"metric {name!r} is not saved" for name in metrics if name not in saved]
    problems += [f"saved metric {name!r} is not configured" for name in saved if name not in metrics]
    for name in set(metrics) & set(saved):
        names = set(metrics[name].metric_state)
        if set(saved[name]["states"]) != names:
            problems.append(f"metric {name!r} has states {sorted(names)}, saved {sorted(saved[name]['states'])}")
    if problems:
        raise ValueError("the checkpoint's metric states do not fit the configured metrics: " + "; ".join(problems))
    for metric in metrics.values():
        _check_update_count(metric)
    for name, metric in metrics.items():
        device = metric.device
        metric.reset()  # forgets any cached compute() result too
        for key, value in saved[name]["states"].items():
            moved = value.to(device) if isinstance(value, Tensor) else [item.to(device) for item in value]
            setattr(metric, key, moved)
        _set_update_count(metric, int(saved[name]["update_count"]))


def _set_update_count(metric: Metric, count: int) -> None:
    """Restore a metric's update count (checked by :func:`_check_update_count` first)."""
    metric._update_count = count


def _check_update_count(metric: Metric) -> None:
    """torchmetrics offers a metric's update count read-only (``update_count``, which ``compute`` checks to warn
    about a metric never updated, and a mean-reducing ``merge_state`` divides by), and no public way to set it; it
    lives in ``_update_count`` (torchmetrics 1.0 to 1.9). Checked before anything changes, so a torchmetrics that
    moves it fails loudly instead of resuming with a wrong count."""
    if not hasattr(metric, "_update_count"):
        from torchmetrics import __version__

        raise RuntimeError(
            f"torchmetrics {__version__}: Metric has no _update_count, which restoring a metric's update count from "
            "a checkpoint relies on (torchsystem_trainer.trainer.results); please report it"
        )
