"""What the aggregate logs during a phase (``Aggregate.log``), reduced on the device into the phase's results.

Each phase's :class:`~.results.PhaseResults` holds one :class:`LoggedValues`, the sink the phase binds to the
aggregate (``Aggregate.bind_log``). Per ``log`` call it checks the name once per phase and appends the value to a
list; at the batch's end (``PhaseResults.update``, switched on by the phase's first ``log`` call, so a phase whose
aggregate never logs does no per-batch work for it) each value joins its name's :class:`Series` with the batch's
size. Values stay tensors on their device; every 1024 of a name are folded into one running tensor, as the losses
are. At the phase's end :meth:`LoggedValues.parts` gives the tensors to reduce across processes and read with the
loss (one host read in one process).

Reductions (Lightning's ``reduce_fx``): ``"mean"`` is ``sum(value * batch size) / sum(batch size)`` over the batches
that logged the name (and over the processes), ``"sum"`` the plain sum, ``"max"``/``"min"`` the extremes. A value
logged between batches (in a callback) counts with the next batch, or the last one at the phase's end.

Under several processes, every process must log the same names with ``on_epoch=True`` in a phase (the reduction
is one collective over them); :meth:`LoggedValues.layout` lets the phase check that first, so a mismatch is a
``RuntimeError`` on every process instead of a hang.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from torchsystem_trainer.domain.logged import LoggedValue, LogOptions

__all__ = ["LoggedValues", "Series", "bind_log", "read_values"]

_Key = TypeVar("_Key", bound=Hashable)
_FOLD = 1024  # values of one name kept before they are folded into its running reduction
_RESERVED = ("loss", "loss_step")  # the Trainer's own loss, per phase and per step


class Series:
    """The values of one logged name in one phase, and their running reduction.

    Attributes:
        name: the logged name.
        options: ``(on_step, on_epoch, reduce_fx, prog_bar)``.
        step_key: ``"<phase>/<name>_step"``, the key of its step values.
        values: tensor values not folded yet; ``sizes``: their batch sizes (``"mean"`` only).
        total: the folded device part: the sum of value x size (``"mean"``), the sum, the max or the min; or ``None``.
        host: the same over values given as numbers, or ``None``.
        weight: the summed batch sizes (``"mean"``) or the count of values, of the folded and host parts.
    """

    __slots__ = ("host", "mean", "name", "on_epoch", "on_step", "options", "reduce_fx", "sizes", "step_key",
                 "total", "values", "weight")

    def __init__(self, phase: str, name: str, options: LogOptions) -> None:
        self.name, self.options = name, options
        self.on_step, self.on_epoch, self.reduce_fx, _ = options
        self.mean = self.reduce_fx == "mean"
        self.step_key = f"{phase}/{name}_step"
        self.values: list[Tensor] = []
        self.sizes: list[int] = []
        self.total: Tensor | None = None
        self.host: float | None = None
        self.weight = 0

    def add(self, value: LoggedValue, size: int) -> None:
        """Add one value, logged in a batch of ``size`` samples (:meth:`LoggedValues.end_batch` does the same for
        tensors, in line)."""
        if type(value) is float:
            self.add_number(value, size)
            return
        self.values.append(value)  # type: ignore[arg-type]
        if self.mean:
            self.sizes.append(size)
        if len(self.values) >= _FOLD:
            self.fold()

    def add_number(self, value: float, size: int) -> None:
        """Add one value given as a number (reduced on the host, exactly in float64)."""
        mean = self.mean
        self.weight += size if mean else 1
        term = value * size if mean else value
        host = self.host
        self.host = term if host is None else _combine(self.reduce_fx, host, term)

    def fold(self) -> None:
        """Fold the kept tensor values into :attr:`total` (on the first value's device)."""
        if not self.values:
            return
        device = self.values[0].device
        try:
            stacked = torch.stack(self.values)
        except RuntimeError:  # values on several devices, or of shapes [] and [1]
            stacked = torch.stack([value.reshape(()).to(device) for value in self.values])
        stacked = stacked.reshape(-1)
        stacked = stacked.to(torch.promote_types(stacked.dtype, torch.float32))
        if self.mean:
            sizes = torch.tensor(self.sizes, dtype=stacked.dtype)
            if stacked.is_cuda:  # from pinned memory the copy is asynchronous: no host-device sync
                sizes = sizes.pin_memory()
            folded = torch.dot(stacked, sizes.to(device, non_blocking=True))
        elif self.reduce_fx == "sum":
            folded = stacked.sum()
        else:
            folded = stacked.max() if self.reduce_fx == "max" else stacked.min()
        self.total = folded if self.total is None else _combine_tensors(self.reduce_fx, self.total, folded)
        self.weight += sum(self.sizes) if self.mean else len(self.values)
        self.values.clear()
        self.sizes.clear()

    def part(self, device: torch.device) -> Tensor:
        """The local reduction as a tensor on ``device``, for the collective: ``[sum(value x size), sum(size)]``
        for ``"mean"``, ``[sum]``, ``[max]``, ``[-min]`` (so that one ``max`` collective serves both extremes)."""
        self.fold()
        total = None if self.total is None else self.total.to(device)
        dtype = torch.float32 if total is None else total.dtype
        if self.host is not None:
            host = torch.tensor(self.host, dtype=dtype, device=device)
            total = host if total is None else _combine_tensors(self.reduce_fx, total, host)
        if total is None:  # no value on this process (it joins the collective all the same): the neutral element
            neutral = {"max": -math.inf, "min": math.inf}.get(self.reduce_fx, 0.0)
            total = torch.tensor(neutral, dtype=dtype, device=device)
        if self.mean:
            return torch.stack([total, torch.tensor(float(self.weight), dtype=dtype, device=device)])
        return (-total if self.reduce_fx == "min" else total).reshape(1)

    def state_dict(self) -> dict[str, Any]:
        """Plain data, exactly what was accumulated (no folding: a resumed phase folds where this one would)."""
        return {
            "name": self.name,
            "options": list(self.options),
            "values": _stacked(self.values),
            "sizes": list(self.sizes),
            "total": self.total,
            "host": self.host,
            "weight": self.weight,
        }


def _stacked(values: list[Tensor]) -> Tensor | list[Tensor] | None:
    """One tensor when the values share a device and dtype (unbinding gives them back unchanged), else the list."""
    if not values:
        return None
    first = values[0]
    if all(value.device == first.device and value.dtype == first.dtype and value.shape == first.shape
           for value in values):
        return torch.stack(values)
    return list(values)


def _combine(reduce_fx: str, a: float, b: float) -> float:
    return max(a, b) if reduce_fx == "max" else min(a, b) if reduce_fx == "min" else a + b


def _combine_tensors(reduce_fx: str, a: Tensor, b: Tensor) -> Tensor:
    b = b.to(a.device)
    if reduce_fx == "max":
        return torch.maximum(a, b)
    if reduce_fx == "min":
        return torch.minimum(a, b)
    return a + b


class LoggedValues:
    """The sink of one phase's ``Aggregate.log`` calls (see the module docstring).

    Args:
        phase: ``"train"``, ``"validation"``, ``"test"``.
        device: where the phase's results live (the strategy's root device).
        reserved: result names the aggregate may not log: the phase's metric names (``"loss"`` always is).
        on_first_log: called at the phase's first ``log`` call (after each :meth:`reset`): what switches the
            per-batch bookkeeping on.
    """

    def __init__(
        self,
        phase: str,
        device: torch.device,
        reserved: Iterable[str] = (),
        on_first_log: Callable[[], None] | None = None,
    ) -> None:
        self.phase = phase
        self.device = device
        self.reserved = frozenset(reserved)
        self.series: dict[str, Series] = {}
        self._on_first_log = on_first_log
        self._active = False
        self._pending: list[tuple[Series, LoggedValue]] = []
        self._batch: list[tuple[Series, LoggedValue]] = []  # the latest finished batch's values
        self._bar: dict[str, LoggedValue] = {}
        self._size = 1  # the latest batch's size

    def __call__(self, name: str, value: LoggedValue, options: LogOptions) -> None:
        """Receive one checked value (``Aggregate.log`` checked the name, the options and the value).

        Raises:
            ValueError: for a reserved name, or a name logged earlier in the phase with other options.
        """
        series = self.series.get(name)
        if series is None or series.options != options:
            series = self._register(name, options)
        self._pending.append((series, value))
        if options[3]:
            self._bar[name] = value
        if not self._active:
            self._active = True
            if self._on_first_log is not None:
                self._on_first_log()

    def _register(self, name: str, options: LogOptions) -> Series:
        where = f"{self.phase!r} phase"
        known = self.series.get(name)
        if known is not None:
            raise ValueError(
                f"Aggregate.log({name!r}) was called in the {where} with on_step, on_epoch, reduce_fx, prog_bar = "
                f"{known.options} and now with {options}; log a name with the same options throughout a phase "
                "(as Lightning requires)"
            )
        if name in _RESERVED:
            raise ValueError(
                f"Aggregate.log({name!r}): {name!r} is the Trainer's own loss in the {where} (what fit/evaluate "
                f"return, reported as '{self.phase}/{name}'); log your value under another name"
            )
        if name in self.reserved:
            raise ValueError(
                f"Aggregate.log({name!r}): {name!r} is a configured metric of the {where} (Trainer(metrics=...)), "
                f"reported as '{self.phase}/{name}'; log your value under another name"
            )
        series = Series(self.phase, name, options)
        for other in self.series.values():
            if (other.on_step and name == f"{other.name}_step") or (series.on_step and other.name == f"{name}_step"):
                raise ValueError(
                    f"Aggregate.log({name!r}): both {name!r} and {other.name!r} are logged in the {where}, and one "
                    "is the other's step value ('<name>_step'); rename one"
                )
        self.series[name] = series
        return series

    def end_batch(self, size: int) -> None:
        """The batch whose values are pending ended with ``size`` samples: add them to their series."""
        batch, self._batch, self._pending = self._pending, self._pending, []
        self._size = size
        for series, value in batch:  # Series.add, in line: this runs per step
            if not series.on_epoch:
                continue
            if type(value) is float:
                series.add_number(value, size)
                continue
            values = series.values
            values.append(value)  # type: ignore[arg-type]
            if series.mean:
                series.sizes.append(size)
            if len(values) >= _FOLD:
                series.fold()

    def step_values(self) -> dict[str, LoggedValue]:
        """The values logged with ``on_step=True`` in the latest finished batch, ``{"<phase>/<name>_step": value}``
        (tensors unread; the last value of a name logged twice)."""
        return {series.step_key: value for series, value in self._batch if series.on_step}

    def bar_values(self) -> dict[str, LoggedValue]:
        """The latest value of each name logged with ``prog_bar=True`` in the phase, ``{name: value}``."""
        return dict(self._bar)

    def epoch_series(self) -> list[Series]:
        """The series reduced into the results (``on_epoch=True``), sorted by name (the same order on every
        process); values still pending (logged after the last batch) join the last batch first."""
        if self._pending:
            self.end_batch(self._size)
        return sorted((series for series in self.series.values() if series.on_epoch), key=lambda s: s.name)

    def layout(self, series: list[Series], dtype: torch.dtype) -> Tensor:
        """``[1, k, k^2, m, m^2, h, h^2]`` on the device, summed over the processes before the values are: ``k``
        and ``m`` the sizes of this process's sum and max parts, ``h`` a small hash of the names and reductions. The
        sums are the same on every process, and (Cauchy-Schwarz) all processes agree iff ``sum(x)^2 == n sum(x^2)``
        for each, ``n`` being the first sum (the number of processes)."""
        sums = sum(2 if item.reduce_fx == "mean" else 1 for item in series if item.reduce_fx in ("mean", "sum"))
        maxima = sum(1 for item in series if item.reduce_fx in ("max", "min"))
        text = "\n".join(f"{item.name}\t{item.reduce_fx}" for item in series)
        signature = zlib.crc32(text.encode()) % 64  # small: its square times the processes stays exact in float32
        return torch.tensor(
            [1, sums, sums * sums, maxima, maxima * maxima, signature, signature * signature],
            dtype=dtype,
            device=self.device,
        )

    def parts(self, series: list[Series]) -> tuple[Tensor | None, Tensor | None]:
        """The local reductions to combine across processes: ``(sum part, max part)``, each a 1-d tensor on the
        device, ``None`` when empty (see :meth:`Series.part`)."""
        sums = [item.part(self.device) for item in series if item.reduce_fx in ("mean", "sum")]
        maxima = [item.part(self.device) for item in series if item.reduce_fx in ("max", "min")]
        return (
            torch.cat(sums) if sums else None,
            torch.cat(maxima) if maxima else None,
        )

    @staticmethod
    def decode(series: list[Series], sums: list[float], maxima: list[float]) -> dict[str, float]:
        """The reduced results, ``{name: float}`` in ``series`` order, from the read parts."""
        results: dict[str, float] = {}
        sum_values, max_values = iter(sums), iter(maxima)
        for item in series:
            if item.reduce_fx == "mean":
                total, weight = next(sum_values), next(sum_values)
                results[item.name] = total / weight if weight else math.nan
            elif item.reduce_fx == "sum":
                results[item.name] = next(sum_values)
            else:
                value = next(max_values)
                results[item.name] = -value if item.reduce_fx == "min" else value
        return results

    def reset(self) -> None:
        """Forget the phase's values and names; the next ``log`` call switches the bookkeeping on again."""
        self.series = {}
        self._pending, self._batch, self._bar = [], [], {}
        self._active = False

    def state_dict(self) -> dict[str, Any]:
        """Every series' accumulation as plain data, in the order names were first logged."""
        return {"series": [series.state_dict() for series in self.series.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; tensors go to this phase's device.

        Raises:
            KeyError, TypeError, ValueError: for a malformed state; nothing changes then.
        """
        restored: dict[str, Series] = {}
        for saved in state["series"]:
            on_step, on_epoch, reduce_fx, prog_bar = saved["options"]
            series = Series(self.phase, str(saved["name"]), (bool(on_step), bool(on_epoch), str(reduce_fx),
                                                              bool(prog_bar)))
            values = saved["values"]
            series.values = [] if values is None else [
                value.to(self.device) for value in (values.unbind(0) if isinstance(values, Tensor) else values)
            ]
            series.sizes = [int(size) for size in saved["sizes"]]
            series.total = None if saved["total"] is None else saved["total"].to(self.device)
            series.host = None if saved["host"] is None else float(saved["host"])
            series.weight = int(saved["weight"])
            restored[series.name] = series
        self.reset()
        self.series = restored


def read_values(values: Mapping[_Key, LoggedValue]) -> dict[_Key, float]:
    """Logged values as floats, with one host read for all the tensors among them (stacked on the first one's
    device); numbers as they are.

    Args:
        values: ``{key: tensor or float}``, e.g. :meth:`LoggedValues.step_values`.

    Returns:
        ``{key: float}`` in the same order.
    """
    tensors = {key: value for key, value in values.items() if isinstance(value, Tensor)}
    if not tensors:
        return {key: float(value) for key, value in values.items()}
    if len(tensors) == 1:  # one read of one value
        key, tensor = next(iter(tensors.items()))
        return {name: float(tensor) if name == key else float(value) for name, value in values.items()}
    device = next(iter(tensors.values())).device
    read = iter(torch.stack([value.reshape(()).to(device, torch.float64 if device.type != "mps" else torch.float32)
                             for value in tensors.values()]).tolist())
    return {key: next(read) if key in tensors else float(value) for key, value in values.items()}


def bind_log(aggregate: Any, sink: Any) -> Any:
    """Send ``aggregate``'s ``log`` calls to ``sink`` (a :class:`LoggedValues`; ``None``: unbind), when it is an
    ``Aggregate`` (a module without ``bind_log`` logs nothing through the Trainer).

    Returns:
        The sink bound before (what to bind again afterwards: a validation inside the training phase gives the
        training phase's back), ``None`` when there was none.
    """
    bind = getattr(aggregate, "bind_log", None)
    return bind(sink) if callable(bind) else None
