"""A hook named after Lightning's fails at construction naming the hook that does its work here; the table of those
names (LIGHTNING_HOOKS) is the one the module docstring and the README show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import HOOKS, Callback, CallbackHookError
from torchsystem_trainer.callbacks import callback as callback_module
from torchsystem_trainer.callbacks.callback import LIGHTNING_HOOKS

README = Path(__file__).resolve().parents[2] / "README.md"


def callback_with(name: str) -> Callback:
    """A callback whose only hook is ``name``, taking the event."""
    return type("Ported", (Callback,), {name: lambda self, event: None})()


def hook_error(name: str) -> str:
    with pytest.raises(CallbackHookError) as caught:
        Trainer(callbacks=[callback_with(name)], enable_progress_bar=False)
    return str(caught.value)


SUGGESTIONS = {
    "on_validation_start": (
        "`on_stage_started` (stage 'validate') or `on_phase_started` (phase 'validation', inside a fit)"
    ),
    "on_validation_end": "`on_stage_ended` (stage 'validate') or `on_validated` (inside a fit)",
    "on_test_end": "`on_stage_ended` (stage 'test')",
    "on_predict_start": "`on_stage_started` (stage 'predict')",
    "on_fit_start": "`on_fit_started`",
    "on_exception": "`on_exception_raised`",
    "on_before_optimizer_step": "`on_gradients_computed`",
}


@pytest.mark.parametrize(("name", "here"), list(SUGGESTIONS.items()), ids=list(SUGGESTIONS))
def test_a_lightning_hook_name_names_our_hook_for_it(name, here):
    lead = f"Ported.{name} looks like a hook but matches no event; "
    assert hook_error(name) == f"{lead}`{name}` is Lightning's name; here: {here}"


@pytest.mark.parametrize("name", sorted(LIGHTNING_HOOKS))
def test_every_lightning_hook_name_gets_the_table_answer_and_no_guess(name):
    message = hook_error(name)
    assert f"`{name}` is Lightning's name; here: " in message
    assert "did you mean" not in message
    for hook, where in LIGHTNING_HOOKS[name]:
        assert f"`{hook}`" + (f" ({where})" if where else "") in message


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("on_batch_train", "on_batch_trained"),
        ("on_stage_end", "on_stage_ended"),
        ("on_exceptions", "on_exception_raised"),
    ],
    ids=["on_batch_train", "on_stage_end", "on_exceptions"],
)
def test_other_names_still_get_the_closest_hook_by_spelling(name, closest):
    message = hook_error(name)
    assert f"did you mean {closest!r}?" in message
    assert "Lightning" not in message


def test_the_table_names_only_hooks_that_exist_and_no_hook_of_ours():
    for name, equivalents in LIGHTNING_HOOKS.items():
        assert name.startswith("on_") and name not in HOOKS, name
        assert equivalents, name
        for hook, _ in equivalents:
            assert hook in HOOKS, (name, hook)


def test_the_table_covers_the_lightning_hooks_with_an_equivalent():
    assert {
        "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
        "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_end",
        "on_validation_batch_end", "on_test_start", "on_test_end", "on_test_batch_end", "on_predict_start",
        "on_predict_end", "on_predict_batch_end", "on_exception", "on_before_optimizer_step", "on_after_backward",
    } <= set(LIGHTNING_HOOKS)


def hook_names(text: str) -> list[str]:
    return re.findall(r"`+(on_\w+)`+", text)


def readme_rows() -> list[tuple[str, str]]:
    """The README's hooks table, as (Lightning column, our column) pairs."""
    text = README.read_text()
    table = text[text.index("| Lightning hook | ours |") :].split("\n\n", 1)[0]
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    assert all(len(row) == 2 for row in rows), rows
    return [(lightning, ours) for lightning, ours in rows]


def docstring_rows() -> list[tuple[str, str]]:
    """The module docstring's RST table, as (Lightning column, our column) pairs, continuation lines joined."""
    doc = callback_module.__doc__
    assert doc is not None
    lines = doc[doc.index("=====") :].splitlines()
    width = lines[0].index(" ")
    rows: list[list[str]] = []
    for line in lines[3:]:
        if line.startswith("="):
            break
        if line[:width].strip():
            rows.append([line[:width], line[width:]])
        else:
            rows[-1][1] += " " + line.strip()
    return [(lightning, ours) for lightning, ours in rows]


@pytest.mark.parametrize(
    ("source", "rows"), [("README", readme_rows), ("docstring", docstring_rows)], ids=["README", "docstring"]
)
def test_the_readme_and_docstring_tables_say_what_the_dict_says(source, rows):
    table = rows()
    listed = [name for lightning, _ in table for name in hook_names(lightning)]
    assert sorted(listed) == sorted(LIGHTNING_HOOKS), f"{source}: Lightning names differ from LIGHTNING_HOOKS"
    for lightning, ours in table:
        for name in hook_names(lightning):
            expected = {hook for hook, _ in LIGHTNING_HOOKS[name]}
            assert expected <= set(hook_names(ours)), f"{source}: {name} -> {ours!r}, LIGHTNING_HOOKS: {expected}"
