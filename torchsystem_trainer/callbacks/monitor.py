"""Reading a monitored value out of an epoch's results, for ``EarlyStopping`` and ``ModelCheckpoint``.

``Iterated.results`` (and ``trainer.callback_metrics``) hold ``"<phase>/<name>"`` keys for the phases that ran in
that epoch. A phase may not run in an epoch: validation runs only every ``check_val_every_n_epoch`` epochs, and is
skipped when a limit or a stop request cuts the training phase short. The rule, shared by every monitoring
callback:

* the key is present: its value is used;
* the key is absent and names a phase ``fit`` runs (``"train/..."``, ``"validation/..."``) that did not run this
  epoch (no key of that phase in the results): there is nothing to check this epoch, and the epoch is skipped
  (a patience counter does not move);
* otherwise (the phase ran but has no such metric, or the key does not name a phase ``fit`` runs, e.g. a typo
  like ``"val/loss"`` or a bare ``"loss"``): :class:`MonitorError`, listing the keys that are available.

A monitored key that never appears during a whole fit (e.g. ``"validation/loss"`` with no validation loader) is
reported by a warning when the fit ends.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

__all__ = ["FIT_PHASES", "MODES", "Mode", "MonitorError", "check_mode", "monitored_value", "warn_never_seen"]

Mode = Literal["min", "max"]
MODES: tuple[str, ...] = ("min", "max")
FIT_PHASES: tuple[str, ...] = ("train", "validation")
"""The phases ``Trainer.fit`` runs, hence the prefixes of ``Iterated.results`` keys."""


class MonitorError(KeyError):
    """A monitored key is not in the results of a phase that ran, or names no phase of ``fit``.

    A ``KeyError`` (so ``except KeyError`` catches it) whose message prints as written, without the quotes
    ``KeyError`` puts around its argument.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_mode(owner: str, mode: object) -> Mode:
    """Check a ``mode`` argument.

    Args:
        owner: the callback's name, for the message.
        mode: the value given.

    Returns:
        ``mode``, ``"min"`` or ``"max"``.

    Raises:
        ValueError: for any other value, naming the argument, the value and the valid values.
    """
    if mode not in MODES:
        raise ValueError(f"{owner}: mode={mode!r} is invalid; valid: 'min', 'max'")
    return mode  # type: ignore[return-value]


def monitored_value(owner: str, key: str, results: Mapping[str, float]) -> float | None:
    """The value of ``key`` in an epoch's ``results``, or ``None`` when its phase did not run that epoch.

    Args:
        owner: the callback, as it should be named in the message (``"EarlyStopping(monitor='x')"``).
        key: the monitored key, ``"<phase>/<name>"``.
        results: the epoch's flat results (``Iterated.results`` or ``trainer.callback_metrics``).

    Returns:
        The value as a ``float`` (possibly ``nan`` or ``inf``), or ``None`` if the key's phase is one ``fit`` runs
        and no key of that phase is in ``results``.

    Raises:
        MonitorError: when the key is missing although its phase ran, or names no phase ``fit`` runs; the
            message lists the available keys.
    """
    if key in results:
        return float(results[key])
    phase, separator, _ = key.partition("/")
    phase_ran = any(name.startswith(f"{phase}/") for name in results)
    if separator and phase in FIT_PHASES and not phase_ran:
        return None
    available = ", ".join(repr(name) for name in sorted(results)) or "none"
    if separator and phase in FIT_PHASES:
        why = f"the {phase!r} phase ran but has no metric {key.partition('/')[2]!r}"
    else:
        why = f"keys are '<phase>/<name>' with a phase in {FIT_PHASES}"
    raise MonitorError(f"{owner}: {key!r} is not in the epoch's results ({why}); available keys: {available}")


def warn_never_seen(owner: str, key: str, checks: int, reason: str, epochs_ran: bool) -> None:
    """Warn, at the end of a fit that ran to a normal end, when the monitored key was never found.

    Args:
        owner: the callback's name, for the message.
        key: the monitored key.
        checks: how many epochs had the key during the fit.
        reason: ``FitEnded.reason``; nothing is said for ``"exception"`` and ``"interrupted"``.
        epochs_ran: whether this fit ended at least one epoch (a resumed fit with nothing left to do ends none,
            and then nothing is said).
    """
    if epochs_ran and checks == 0 and reason not in ("exception", "interrupted"):
        warnings.warn(
            f"{owner}: {key!r} was in no epoch's results during this fit, so it was never checked (a monitored "
            f"phase that never ran: is there a 'validation' loader, and does check_val_every_n_epoch allow it?)",
            stacklevel=2,
        )

