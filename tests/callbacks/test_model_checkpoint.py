"""ModelCheckpoint: file names, top-k retention, last.ckpt, finding and resuming, safe deletion, exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint, MonitorError, checkpoint_writes
from torchsystem_trainer.checkpoint import CheckpointError


class Scripted(Classifier):
    """Trains normally; its validation loss at epoch ``e`` is ``script[e]``."""

    def __init__(self, script: list[float] | None = None, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__()
        self.script = script or [1.0] * 20

    def evaluate(self, inputs, targets):
        return self(inputs), torch.tensor(self.script[self.epoch])


def fit(checkpoint, tmp_path, max_epochs=3, aggregate=None, ckpt_path=None, callbacks=(), **trainer_args):
    aggregate = aggregate if aggregate is not None else Scripted()
    data = make_data()
    trainer = Trainer(
        callbacks=[*callbacks, checkpoint],
        max_epochs=max_epochs,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        **trainer_args,
    )
    trainer.fit(aggregate, [("train", data), ("validation", data[:1])], ckpt_path=ckpt_path)
    return trainer, aggregate


def names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_default_names_and_the_latest_k_without_a_monitor(tmp_path):
    checkpoint = ModelCheckpoint(save_top_k=2)
    fit(checkpoint, tmp_path)
    folder = tmp_path / "checkpoints"
    assert checkpoint.dirpath == folder
    assert names(folder) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert checkpoint.best_model_path == str(folder / "epoch=2-step=12.ckpt")
    assert checkpoint.best_model_score is None


def test_save_top_k_minus_one_keeps_all_and_zero_keeps_none(tmp_path):
    fit(ModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1), tmp_path)
    assert names(tmp_path / "all") == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    fit(ModelCheckpoint(dirpath=tmp_path / "none", save_top_k=0), tmp_path)
    assert not (tmp_path / "none").exists()


def test_metrics_in_the_template_with_slashes_made_underscores(tmp_path):
    checkpoint = ModelCheckpoint(filename="run/{epoch:02d}-{validation/loss:.2f}", save_top_k=-1)
    fit(checkpoint, tmp_path, max_epochs=2, aggregate=Scripted([0.5, 0.25]))
    assert names(tmp_path / "checkpoints") == ["run_00-0.50.ckpt", "run_01-0.25.ckpt"]


@pytest.mark.parametrize(
    ("mode", "kept", "best"),
    [("min", {3: 0.2, 1: 0.3}, 3), ("max", {4: 0.6, 0: 0.5}, 4)],
    ids=["min", "max"],
)
def test_top_k_by_monitor(tmp_path, mode, kept, best):
    checkpoint = ModelCheckpoint(monitor="validation/loss", mode=mode, save_top_k=2, filename="e{epoch}")
    fit(checkpoint, tmp_path, max_epochs=5, aggregate=Scripted([0.5, 0.3, 0.4, 0.2, 0.6]))
    folder = tmp_path / "checkpoints"
    assert names(folder) == sorted(f"e{epoch}.ckpt" for epoch in kept)
    assert checkpoint.best_k_models == {str(folder / f"e{e}.ckpt"): pytest.approx(s) for e, s in kept.items()}
    assert checkpoint.best_model_path == str(folder / f"e{best}.ckpt")
    assert checkpoint.best_model_score == pytest.approx(kept[best])


def test_nan_scores_rank_worst(tmp_path):
    checkpoint = ModelCheckpoint(monitor="validation/loss", save_top_k=1, filename="e{epoch}")
    fit(checkpoint, tmp_path, max_epochs=2, aggregate=Scripted([0.5, float("nan")]))
    assert names(tmp_path / "checkpoints") == ["e0.ckpt"]


def test_last_ckpt_is_a_complete_file_loadable_with_weights_only(tmp_path):
    checkpoint = ModelCheckpoint(save_last=True)
    trainer, aggregate = fit(checkpoint, tmp_path)
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    assert names(folder) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    assert not last.is_symlink() and checkpoint.last_model_path == str(last)
    state = torch.load(last, weights_only=True)
    assert state["loop"]["progress"] == {"epoch": 3, "batch": 0, "step": 12, "global_step": 12}
    for name, tensor in aggregate.state_dict().items():
        assert torch.equal(state["aggregate"]["modules"][name], tensor)
    saved = state["callbacks"]["ModelCheckpoint"]
    assert saved["best_model_path"] == str(folder / "epoch=2-step=12.ckpt")
    (folder / "epoch=2-step=12.ckpt").unlink()
    assert torch.load(last, weights_only=True)["loop"]["progress"]["step"] == 12


def test_save_last_with_top_k_zero_writes_only_last(tmp_path):
    fit(ModelCheckpoint(save_top_k=0, save_last=True), tmp_path)
    assert names(tmp_path / "checkpoints") == ["last.ckpt"]


def test_checkpoint_path_last_finds_the_newest_and_ignores_temporary_files(tmp_path):
    checkpoint = ModelCheckpoint(save_top_k=-1)
    trainer, _ = fit(checkpoint, tmp_path)
    folder = tmp_path / "checkpoints"
    (folder / ".epoch=9-step=99.ckpt.abc.tmp").write_bytes(b"torn")
    assert checkpoint.checkpoint_path("last", trainer) == folder / "epoch=2-step=12.ckpt"
    assert checkpoint.checkpoint_path("best", trainer) == folder / "epoch=2-step=12.ckpt"
    (folder / "epoch=2-step=12.ckpt").rename(folder / "a.ckpt")  # the name says nothing; the progress does
    assert checkpoint.checkpoint_path("last", trainer) == folder / "a.ckpt"
    (folder / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="junk.ckpt' is not a usable checkpoint"):
        assert checkpoint.checkpoint_path("last", trainer) == folder / "a.ckpt"


def test_checkpoint_path_without_files_is_none(tmp_path):
    trainer = Trainer(enable_progress_bar=False, default_root_dir=tmp_path)
    checkpoint = ModelCheckpoint()
    assert checkpoint.checkpoint_path("last", trainer) is None
    assert checkpoint.checkpoint_path("best", trainer) is None
    with pytest.raises(ValueError, match="which='first' is invalid"):
        checkpoint.checkpoint_path("first", trainer)


def test_ckpt_path_last_without_a_checkpoint_starts_from_scratch(tmp_path):
    trainer, _ = fit(ModelCheckpoint(save_last=True), tmp_path, max_epochs=2, ckpt_path="last")
    assert trainer.global_step == 8


def test_resuming_from_last_restores_the_weights_and_continues_identically(tmp_path):
    _, straight = fit(ModelCheckpoint(dirpath=tmp_path / "straight"), tmp_path, max_epochs=3)

    _, first = fit(ModelCheckpoint(save_last=True), tmp_path, max_epochs=2)
    saved = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    again = Scripted(seed=1)  # different initial weights
    fit(ModelCheckpoint(save_last=True), tmp_path, max_epochs=2, aggregate=again, ckpt_path="last")
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, saved[name])  # nothing left to train: exactly the saved weights

    resumed = Scripted(seed=2)
    trainer, _ = fit(ModelCheckpoint(save_last=True), tmp_path, max_epochs=3, aggregate=resumed, ckpt_path="last")
    assert trainer.global_step == 12 and resumed.epoch == 3
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, straight.state_dict()[name])


def test_old_files_are_removed_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    checkpoint = ModelCheckpoint(monitor="validation/loss", filename="e{epoch}")
    real_save, calls = checkpoint_writes.save_atomic, []

    def failing_second_save(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(state, path)

    monkeypatch.setattr(checkpoint_writes, "save_atomic", failing_second_save)
    with pytest.raises(OSError, match="disk full"):
        fit(checkpoint, tmp_path, max_epochs=2, aggregate=Scripted([0.5, 0.1]))
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["e0.ckpt"]  # the better e1 failed: e0 is still there, and still tracked
    assert checkpoint.best_model_path == str(folder / "e0.ckpt")
    assert checkpoint.best_k_models == {str(folder / "e0.ckpt"): pytest.approx(0.5)}


def test_fast_dev_run_writes_nothing(tmp_path):
    fit(ModelCheckpoint(save_last=True, every_n_steps=1, save_on_exception=True), tmp_path, fast_dev_run=True)
    assert not (tmp_path / "checkpoints").exists()


def test_step_checkpoints(tmp_path):
    checkpoint = ModelCheckpoint(every_n_steps=3, save_top_k=-1)
    fit(checkpoint, tmp_path, max_epochs=2)
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    state = torch.load(folder / "epoch=0-step=3.ckpt", weights_only=True)
    assert state["loop"]["progress"] == {"epoch": 0, "batch": 3, "step": 3, "global_step": 3}


def test_an_epoch_end_at_the_step_of_a_step_checkpoint_supersedes_it(tmp_path):
    checkpoint = ModelCheckpoint(every_n_steps=4, every_n_epochs=1, save_top_k=-1)
    fit(checkpoint, tmp_path, max_epochs=1)
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["epoch=0-step=4.ckpt"]
    progress = torch.load(folder / "epoch=0-step=4.ckpt", weights_only=True)["loop"]["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 0)


def test_step_checkpoints_with_a_monitor_take_the_latest_epoch_results(tmp_path):
    checkpoint = ModelCheckpoint(
        monitor="validation/loss", every_n_steps=4, every_n_epochs=1, save_top_k=-1, save_last=True
    )
    fit(checkpoint, tmp_path, max_epochs=2, aggregate=Scripted([0.5, 0.25]))
    folder = tmp_path / "checkpoints"
    # step 4 (epoch 0, no results yet): only last.ckpt; its epoch's end: the top-k file; step 8 (epoch 0's
    # score) is then superseded by epoch 1's end at the same step
    assert names(folder) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert checkpoint.best_k_models == {
        str(folder / "epoch=0-step=4.ckpt"): pytest.approx(0.5),
        str(folder / "epoch=1-step=8.ckpt"): pytest.approx(0.25),
    }


def test_a_name_in_use_gets_a_version_suffix(tmp_path):
    checkpoint = ModelCheckpoint(filename="model", save_top_k=-1)
    fit(checkpoint, tmp_path, max_epochs=3)
    assert names(tmp_path / "checkpoints") == ["model-v1.ckpt", "model-v2.ckpt", "model.ckpt"]


def test_epochs_without_validation_write_no_top_k_file_but_last(tmp_path):
    checkpoint = ModelCheckpoint(monitor="validation/loss", save_top_k=-1, save_last=True, filename="e{epoch}")
    trainer, _ = fit(checkpoint, tmp_path, max_epochs=4, check_val_every_n_epoch=2)
    assert names(tmp_path / "checkpoints") == ["e1.ckpt", "e3.ckpt", "last.ckpt"]
    assert checkpoint.checkpoint_path("last", trainer).name == "last.ckpt"


def test_an_unknown_monitor_raises_listing_the_available_keys(tmp_path):
    with pytest.raises(MonitorError, match=r"available keys: 'train/loss', 'validation/loss'"):
        fit(ModelCheckpoint(monitor="validation/acc"), tmp_path)


def test_save_on_exception(tmp_path):
    class Failing(Scripted):
        def fit(self, inputs, targets):
            if self.epoch == 1:
                raise RuntimeError("boom")
            return super().fit(inputs, targets)

    checkpoint = ModelCheckpoint(save_on_exception=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer, _ = fit(checkpoint, tmp_path, aggregate=Failing())
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["epoch=0-step=4.ckpt", "on_exception.ckpt"]
    state = torch.load(folder / "on_exception.ckpt", weights_only=True)
    assert state["loop"]["progress"]["epoch"] == 1


def test_the_state_is_restored_with_the_run(tmp_path):
    first = ModelCheckpoint(monitor="validation/loss", save_top_k=2, filename="e{epoch}")
    script = [0.5, 0.3, 0.4, 0.2, 0.6, 0.1]
    fit(first, tmp_path, max_epochs=3, aggregate=Scripted(script))
    second = ModelCheckpoint(monitor="validation/loss", save_top_k=2, filename="e{epoch}", save_last=True)
    fit(second, tmp_path, max_epochs=6, aggregate=Scripted(script), ckpt_path="last")
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["e3.ckpt", "e5.ckpt", "last.ckpt"]  # e1 and e2, tracked since the first run, removed


def test_checkpoints_hold_the_state_other_callbacks_reached_at_the_same_event(tmp_path):
    """ModelCheckpoint listed first still runs after EarlyStopping (the Trainer runs it last)."""
    stopping = EarlyStopping(patience=5)
    checkpoint = ModelCheckpoint(save_last=True)
    trainer = Trainer(
        callbacks=[checkpoint, stopping], max_epochs=2, enable_progress_bar=False, default_root_dir=tmp_path,
        enable_model_summary=False, verbose=False,
    )
    assert trainer.callbacks == [stopping, checkpoint]
    trainer.fit(Scripted(), [("train", make_data()), ("validation", make_data()[:1])])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["callbacks"]["EarlyStopping"] == stopping.state_dict()


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"save_top_k": -2}, r"save_top_k=-2 is invalid; valid: an int >= -1"),
        ({"save_last": "link"}, r"save_last='link' is invalid"),
        ({"mode": "best"}, r"mode='best' is invalid; valid: 'min', 'max'"),
        ({"every_n_epochs": -1}, r"every_n_epochs=-1 is invalid"),
        ({"every_n_steps": 1.5}, r"every_n_steps=1.5 is invalid"),
        ({"filename": "last"}, r"filename='last' is invalid"),
        ({"filename": "{epoch"}, r"braces"),
        ({"filename": "{epoch:.2q}"}, r"cannot format a number"),
        ({"filename": ".hidden"}, r"starts with '.'"),
        ({"monitor": ""}, r"monitor='' is invalid"),
    ],
    ids=["top_k", "save_last", "mode", "every_n_epochs", "every_n_steps", "reserved", "braces", "spec", "hidden",
         "monitor"],
)
def test_invalid_arguments_raise_naming_them(arguments, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**arguments)


def test_best_is_found_by_a_fresh_process_from_the_newest_checkpoint(tmp_path):
    first = ModelCheckpoint(monitor="validation/loss", save_top_k=1, save_last=True)
    fit(first, tmp_path, max_epochs=2)
    assert first.best_model_path
    fresh = ModelCheckpoint(monitor="validation/loss", save_top_k=1, save_last=True)
    trainer = Trainer(callbacks=[fresh], default_root_dir=tmp_path, enable_progress_bar=False)
    assert fresh.checkpoint_path("best", trainer) == Path(first.best_model_path)


def test_last_refuses_a_folder_of_only_broken_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "epoch=0-step=4.ckpt").write_bytes(b"not a checkpoint")
    checkpoint = ModelCheckpoint()
    trainer = Trainer(callbacks=[checkpoint], default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="not a usable checkpoint"), pytest.raises(CheckpointError, match="none is usable"):
        trainer.fit(Classifier(), make_data(), ckpt_path="last")
    assert (folder / "epoch=0-step=4.ckpt").read_bytes() == b"not a checkpoint"


class _CrashAtTrained(Exception):
    pass


class _Crash(Callback):
    """Raises at the first ``Trained``: the process dies after the step checkpoint of the epoch's last batch."""

    def on_trained(self, event):
        raise _CrashAtTrained


def test_a_resumed_epoch_checkpoint_at_the_step_of_the_step_checkpoint_replaces_it(tmp_path):
    # the step checkpoint of step 4 (the epoch's last batch) is written, then the process dies before the epoch's
    # end; the resumed fit's epoch checkpoint at that same step replaces it, as in the uninterrupted run
    def checkpoint():
        return ModelCheckpoint(every_n_steps=4, every_n_epochs=1, save_top_k=-1, save_last=True)

    fit(checkpoint(), tmp_path / "reference", max_epochs=2)
    with pytest.raises(_CrashAtTrained):
        fit(checkpoint(), tmp_path / "resumed", max_epochs=2, callbacks=[_Crash()])
    assert names(tmp_path / "resumed" / "checkpoints") == ["epoch=0-step=4.ckpt", "last.ckpt"]
    resumed = checkpoint()
    fit(resumed, tmp_path / "resumed", max_epochs=2, ckpt_path="last")
    expected = ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert names(tmp_path / "reference" / "checkpoints") == expected
    assert names(tmp_path / "resumed" / "checkpoints") == expected
    assert list(resumed.best_k_models) == [str(tmp_path / "resumed" / "checkpoints" / n) for n in expected[:2]]


class _CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_trained(self, event):
        if event.step == self.step:
            raise _CrashAtTrained


def test_step_checkpoints_rank_alike_in_a_resumed_fit(tmp_path):
    # a step checkpoint is ranked by trainer.callback_metrics (the latest validation's results), which a checkpoint
    # holds: the fit resumed at step 6 ranks step 8 by epoch 0's validation, as the uninterrupted run does
    def checkpoint():
        return ModelCheckpoint(
            monitor="validation/loss", every_n_steps=2, every_n_epochs=0, save_top_k=2, save_last=True,
            filename="s{step}",
        )

    script = [0.1, 0.5, 0.5]
    reference = checkpoint()
    fit(reference, tmp_path / "reference", aggregate=Scripted(script))
    with pytest.raises(_CrashAtTrained):
        fit(checkpoint(), tmp_path / "resumed", aggregate=Scripted(script), callbacks=[_CrashAtStep(7)])
    resumed = checkpoint()
    trainer, _ = fit(resumed, tmp_path / "resumed", aggregate=Scripted(script), ckpt_path="last")
    assert names(tmp_path / "reference" / "checkpoints") == ["last.ckpt", "s6.ckpt", "s8.ckpt"]
    assert names(tmp_path / "resumed" / "checkpoints") == ["last.ckpt", "s6.ckpt", "s8.ckpt"]
    assert list(resumed.best_k_models.values()) == list(reference.best_k_models.values())
