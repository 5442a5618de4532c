"""``ModelSummary``: at a fit's start, a table of the aggregate's modules (Lightning's ``ModelSummary``), on by
default (``Trainer(enable_model_summary=False)`` turns it off), printed by the process of global rank 0::

    Classifier (registry name Classifier, id 9c6b3e5d2b0e6d0f7b4a2c1e8f3a5d7b)
      | Name      | Type             | Params | Trainable | Size (MB)
    ----------------------------------------------------------------
    0 | nn        | MLP              | 19.0 K | 19.0 K    | 0.076
    1 | criterion | CrossEntropyLoss | 0      | 0         | 0.000
    ----------------------------------------------------------------
    19.0 K    Trainable params
    0         Non-trainable params
    19.0 K    Total params
    0.076     Total params size (MB)

Rows are the modules down to ``max_depth`` levels (1: the aggregate's direct children, as Lightning's default;
deeper rows are named by their dotted path). ``Params`` counts a module's parameters (its submodules' included; a
parameter shared by two modules counts once in the totals), ``Trainable`` those with ``requires_grad``, ``Size``
their bytes in the dtypes they have (``numel * element_size``; 1 MB = 10**6 bytes). Counts read like
Lightning's: ``K``, ``M``, ``B`` for thousands, millions, billions. The first line names the aggregate's class,
its registry name and its ``id`` (``"not set"`` when it has none). Reading sizes does not touch the device.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, ClassVar

from torch import nn

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.registry import getname

if TYPE_CHECKING:
    from torchsystem_trainer.events import FitStarted

__all__ = ["ModelSummary", "human_count", "summarize"]


class ModelSummary(Callback):
    """Print a table of the aggregate's modules when a fit starts (see the module docstring).

    Args:
        max_depth: how many levels of submodules get a row (>= 0; 0 prints only the totals).
        file: where to print; ``None`` for ``sys.stderr`` at the time of printing.

    Attributes:
        summary: the last table printed, ``None`` before the first fit.

    Raises:
        ValueError: for ``max_depth`` that is not an int >= 0.
    """

    rank_zero_only: ClassVar[bool] = True
    is_model_summary: ClassVar[bool] = True

    def __init__(self, max_depth: int = 1, file: IO[str] | None = None) -> None:
        super().__init__()
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise ValueError(f"ModelSummary: max_depth={max_depth!r} is invalid; valid: an int >= 0")
        self.max_depth = max_depth
        self.file = file
        self.summary: str | None = None

    def on_fit_started(self, event: FitStarted) -> None:
        """Print the table."""
        self.summary = summarize(event.aggregate, self.max_depth)
        _print(self.summary, self.file)


def summarize(aggregate: nn.Module, max_depth: int = 1) -> str:
    """The table of the module docstring.

    Args:
        aggregate: the aggregate (any ``nn.Module``).
        max_depth: levels of submodules that get a row.

    Returns:
        The table's lines, joined by newlines (no trailing newline).
    """
    rows = [
        (str(index), name, type(module).__name__, *_counts(module.parameters()))
        for index, (name, module) in enumerate(_modules(aggregate, max_depth))
    ]
    total, trainable, size = _counts(aggregate.parameters())
    header = ("", "Name", "Type", "Params", "Trainable", "Size (MB)")
    cells = [header] + [(i, n, t, human_count(p), human_count(tr), f"{s / 1e6:.3f}") for i, n, t, p, tr, s in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    rule = "-" * max(len(line) for line in lines)
    identity = _identity(aggregate)
    title = f"{type(aggregate).__name__} (registry name {getname(aggregate)}, id {identity})"
    body = [lines[0], rule, *lines[1:], rule] if rows else []
    totals = [
        f"{human_count(trainable):<10}Trainable params",
        f"{human_count(total - trainable):<10}Non-trainable params",
        f"{human_count(total):<10}Total params",
        f"{size / 1e6:<10.3f}Total params size (MB)",
    ]
    return "\n".join([title, *body, *totals])


def human_count(number: int) -> str:
    """``999`` -> ``"999"``, ``19010`` -> ``"19.0 K"``, ``1.2e6`` -> ``"1.2 M"`` (Lightning's format).

    Args:
        number: a count >= 0.

    Returns:
        The count with one decimal and a ``K``/``M``/``B``/``T`` suffix from a thousand on.
    """
    value = float(number)
    for suffix in ("", " K", " M", " B", " T"):
        if abs(value) < 1000 or suffix == " T":
            return str(int(number)) if not suffix else f"{value:.1f}{suffix}"
        value /= 1000
    return str(number)  # unreachable


def _modules(aggregate: nn.Module, max_depth: int) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in aggregate.named_modules()
        if name and name.count(".") < max_depth
    ]


def _counts(parameters: Any) -> tuple[int, int, int]:
    """Parameters, trainable parameters, bytes; each parameter once."""
    seen: set[int] = set()
    total = trainable = size = 0
    for parameter in parameters:
        if id(parameter) in seen or isinstance(parameter, nn.parameter.UninitializedParameter):
            continue  # a lazy module's parameter has no size before its first forward
        seen.add(id(parameter))
        count = parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
        size += count * parameter.element_size()
    return total, trainable, size


def _identity(aggregate: Any) -> str:
    try:
        identity = aggregate.id
    except Exception:  # not initialized, unregistered parts, a user's property that fails
        return "not set"
    return "not set" if identity is None else str(identity)


def _print(text: str, file: IO[str] | None) -> None:
    from tqdm import tqdm  # already loaded with torch; writes above any progress bar

    tqdm.write(text, file=file if file is not None else sys.stderr)
