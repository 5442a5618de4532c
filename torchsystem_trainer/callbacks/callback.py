"""``Callback``: a Consumer of the Trainer's events whose hooks are methods named after them.

A subclass handles an event by defining ``on_<event in snake_case>(self, event)``: ``on_fit_started``,
``on_batch_trained``, ``on_validated``... A method whose name starts with ``on_`` but matches no event is an
error when the Trainer is built, naming the method and the closest event (pluggy's ``_verify_hook`` does the same
for its hook specifications), or, for one of Lightning's hook names, the hook that does its work here; so is a
hook that does not take exactly the event.

Lightning's hooks and ours (the rows of :data:`LIGHTNING_HOOKS`, which also names our hook in the error for a
Lightning hook name; the README's table says the same):

===================================  ================================================================================
Lightning ``Callback`` hook          ``Callback`` hook (event)
===================================  ================================================================================
``on_fit_start``                     ``on_fit_started`` (``FitStarted``)
``on_train_start``                   ``on_fit_started`` (``FitStarted``)
``on_sanity_check_start``            ``on_sanity_check_started`` (``SanityCheckStarted``); no validation hook runs
                                     during the check (Lightning's run with ``trainer.sanity_checking`` set)
``on_sanity_check_end``              ``on_sanity_check_ended`` (``SanityCheckEnded``)
``on_train_epoch_start``             ``on_epoch_started`` (``EpochStarted``); ``on_phase_started`` with
                                     ``phase == "train"``
``on_validation_start``              in ``validate()``: ``on_stage_started`` (``StageStarted``) with
                                     ``stage == "validate"``; inside a fit: ``on_phase_started`` (``PhaseStarted``)
                                     with ``phase == "validation"``
``on_validation_epoch_start``        ``on_phase_started`` with ``phase == "validation"``
``on_test_start``                    ``on_stage_started`` with ``stage == "test"``
``on_test_epoch_start``              ``on_phase_started`` with ``phase == "test"``
``on_predict_start``                 ``on_stage_started`` with ``stage == "predict"``
``on_predict_epoch_start``           ``on_phase_started`` with ``phase == "predict"``
``on_after_backward``                ``on_gradients_computed`` (``GradientsComputed``): once per optimizer step,
                                     after the accumulated backwards (Lightning's: after every backward)
``on_before_optimizer_step``         ``on_gradients_computed`` (``GradientsComputed``)
``on_train_batch_end``               ``on_batch_trained`` (``BatchTrained``)
``on_train_epoch_end``               ``on_trained`` (``Trained``)
``on_validation_batch_end``          ``on_batch_validated`` (``BatchValidated``)
``on_validation_epoch_end``          ``on_validated`` (``Validated``)
``on_validation_end``                in ``validate()``: ``on_stage_ended`` (``StageEnded``) with
                                     ``stage == "validate"``; inside a fit: ``on_validated`` (``Validated``), or,
                                     to act once per validation with its results as ``"validation/<name>"``,
                                     ``on_mid_epoch_validated`` and ``on_iterated``
``on_test_batch_end``                ``on_batch_tested`` (``BatchTested``)
``on_test_epoch_end``                ``on_tested`` (``Tested``)
``on_test_end``                      ``on_stage_ended`` with ``stage == "test"``
``on_predict_batch_end``             ``on_batch_predicted`` (``BatchPredicted``)
``on_predict_epoch_end``             ``on_predicted`` (``Predicted``)
``on_predict_end``                   ``on_stage_ended`` with ``stage == "predict"``
(end of an epoch, after validation)  ``on_iterated`` (``Iterated``)
``on_exception``                     ``on_exception_raised`` (``ExceptionRaised``), in ``fit``, ``validate``,
                                     ``test`` and ``predict``
``on_train_end``                     ``on_fit_ended`` (``FitEnded``), as ``on_fit_end``
``on_fit_end``, ``teardown``         ``on_fit_ended`` (``FitEnded``), whatever the ending (``event.reason``);
                                     Lightning calls ``on_train_end`` and ``on_fit_end`` only when the fit did not
                                     raise, ``teardown`` always
``state_dict``/``load_state_dict``   ``state_dict``/``load_state_dict`` (the same; saved in checkpoints)
===================================  ================================================================================
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar

from torchsystem_trainer.events import EVENTS
from torchsystem_trainer.services import Consumer

__all__ = ["HOOKS", "LIGHTNING_HOOKS", "Callback", "CallbackHookError", "hook_name", "resumed"]


def resumed(trainer: Any) -> bool:
    """Whether the fit now starting resumed from a checkpoint (``trainer.ckpt_path`` is set before ``FitStarted``).

    A stateful callback continues the state its ``load_state_dict`` was given only then: ``load_state_dict`` also
    brings back the outcome of a fit that ran in other processes (a launched ``DDPStrategy``), and the next fit
    without ``ckpt_path`` starts afresh, as it does in one process (Lightning restores callbacks only when
    resuming a fit).
    """
    return getattr(trainer, "ckpt_path", None) is not None


def hook_name(event: type) -> str:
    """The hook method name of an event class: ``BatchTrained`` -> ``on_batch_trained``."""
    return "on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", event.__name__).lower()


HOOKS: dict[str, str] = {hook_name(event): event.__name__ for event in EVENTS}
"""Hook method name -> event class name, for every event the Trainer produces."""

LIGHTNING_HOOKS: dict[str, tuple[tuple[str, str], ...]] = {
    "on_fit_start": (("on_fit_started", ""),),
    "on_train_start": (("on_fit_started", ""),),
    "on_sanity_check_start": (("on_sanity_check_started", ""),),
    "on_sanity_check_end": (("on_sanity_check_ended", ""),),
    "on_train_epoch_start": (("on_epoch_started", ""), ("on_phase_started", "phase 'train'")),
    "on_validation_start": (
        ("on_stage_started", "stage 'validate'"),
        ("on_phase_started", "phase 'validation', inside a fit"),
    ),
    "on_validation_epoch_start": (("on_phase_started", "phase 'validation'"),),
    "on_test_start": (("on_stage_started", "stage 'test'"),),
    "on_test_epoch_start": (("on_phase_started", "phase 'test'"),),
    "on_predict_start": (("on_stage_started", "stage 'predict'"),),
    "on_predict_epoch_start": (("on_phase_started", "phase 'predict'"),),
    "on_after_backward": (("on_gradients_computed", "once per optimizer step, after the accumulated backwards"),),
    "on_before_optimizer_step": (("on_gradients_computed", ""),),
    "on_train_batch_end": (("on_batch_trained", ""),),
    "on_train_epoch_end": (("on_trained", ""),),
    "on_validation_batch_end": (("on_batch_validated", ""),),
    "on_validation_epoch_end": (("on_validated", ""),),
    "on_validation_end": (("on_stage_ended", "stage 'validate'"), ("on_validated", "inside a fit")),
    "on_test_batch_end": (("on_batch_tested", ""),),
    "on_test_epoch_end": (("on_tested", ""),),
    "on_test_end": (("on_stage_ended", "stage 'test'"),),
    "on_predict_batch_end": (("on_batch_predicted", ""),),
    "on_predict_epoch_end": (("on_predicted", ""),),
    "on_predict_end": (("on_stage_ended", "stage 'predict'"),),
    "on_exception": (("on_exception_raised", ""),),
    "on_train_end": (("on_fit_ended", "whatever the ending: read event.reason"),),
    "on_fit_end": (("on_fit_ended", "whatever the ending: read event.reason"),),
}
"""Lightning ``Callback`` hook name -> the hooks that do its work here, each with the condition to check in the
event (``""`` for none); the module docstring's table and the README's say the same. A callback that defines one
of these names fails with an error that names these hooks, instead of the closest name by spelling (which for
``on_validation_start`` would be ``on_fit_started``). Lightning's ``teardown``, ``state_dict`` and
``load_state_dict`` do not start with ``on_``, so they are not checked."""


class CallbackHookError(ValueError):
    """A callback method looks like a hook but matches no event, or does not take the event."""


class Callback(Consumer):
    """Base class of callbacks. Define ``on_<event>`` methods; calling ``super().__init__()`` is optional.

    Attributes:
        rank_zero_only: class attribute; ``True`` for callbacks that run only in the process of global rank 0
            under a data-parallel strategy (those that write files or draw progress). Default ``False``: every
            rank runs the callback and sees the same results.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_trained(self, event):
        ...         print(event.epoch, event.results["loss"])
    """

    rank_zero_only: ClassVar[bool] = False

    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The callback's routing table: its ``on_*`` methods by event name, then any handler registered with
        ``@callback.handler`` (seed style).

        Raises:
            CallbackHookError: for an ``on_*`` method that matches no event (naming our hooks for it when it is
                one of Lightning's hook names, see :data:`LIGHTNING_HOOKS`, else the closest hook by spelling) or
                that does not take exactly one argument, the event.
        """
        table: dict[str, list[Callable[[Any], None]]] = {}
        for name in _hook_like_names(type(self)):
            event = HOOKS.get(name)
            if event is None:
                raise CallbackHookError(
                    f"{type(self).__name__}.{name} looks like a hook but matches no event; {_suggestion(name)}"
                )
            method = getattr(self, name)
            if not _takes_one(method):
                raise CallbackHookError(
                    f"{type(self).__name__}.{name} must take exactly one argument, the {event} event"
                )
            table[event] = [method]
        for event, handlers in super().subscriptions().items():
            table.setdefault(event, []).extend(handlers)
        return table

    def consume(self, message: Any) -> None:
        """Call this callback's handlers of ``message``'s event (the Trainer uses the precomputed table instead).

        Raises:
            CallbackHookError: as :meth:`subscriptions`.
        """
        for handler in self.subscriptions().get(type(message).__name__, ()):
            handler(message)

    def state_dict(self) -> dict[str, Any]:
        """The callback's state, saved in checkpoints; empty by default. Values are tensors, numbers,
        strings, ``None`` and lists/tuples/dicts of those (checkpoints load with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; nothing by default."""


def _suggestion(name: str) -> str:
    """What to write instead of ``name``, an ``on_*`` name that matches no event: our hooks for it when it is a
    Lightning hook name (:data:`LIGHTNING_HOOKS`), else the closest hook name by spelling (``difflib``)."""
    equivalents = LIGHTNING_HOOKS.get(name)
    if equivalents is not None:
        here = " or ".join(f"`{hook}`" + (f" ({where})" if where else "") for hook, where in equivalents)
        return f"`{name}` is Lightning's name; here: {here}"
    closest = difflib.get_close_matches(name, list(HOOKS), n=1, cutoff=0.0)
    return f"did you mean {closest[0]!r}? (hooks: {', '.join(sorted(HOOKS))})"


def _hook_like_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        if klass in (Callback, Consumer, object):
            continue
        for name, value in vars(klass).items():
            if name.startswith("on_") and callable(value) and name not in names:
                names.append(name)
    return sorted(names, key=lambda n: list(HOOKS).index(n) if n in HOOKS else -1)


def _takes_one(method: Callable[..., Any]) -> bool:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return (len(positional) >= 1 or any(p.kind is p.VAR_POSITIONAL for p in parameters)) and len(required) <= 1
