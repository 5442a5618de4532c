"""``Trainer(profiler=...)``: the simple profiler's table (loop regions and each callback's handlers by event), the
PyTorch profiler's trace and tables, and nothing wrapped without one."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, CSVLogger, ModelCheckpoint
from torchsystem_trainer.events import BatchTrained
from torchsystem_trainer.profilers import PyTorchProfiler, SimpleProfiler
from torchsystem_trainer.trainer.dispatch import EventBus

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "verbose": False}


def _fit(tmp_path, profiler, epochs=2, samples=32):
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=epochs, profiler=profiler, default_root_dir=tmp_path,
        callbacks=[CSVLogger(), ModelCheckpoint(dirpath=tmp_path / "checkpoints")], **QUIET,
    )
    trainer.fit(Classifier(), [("train", make_data(samples=samples)), ("validation", make_data(samples=8, seed=1))])
    return trainer


def _rows(report: str) -> dict[str, list[str]]:
    """The table's rows by region: ``[seconds, calls, us/call, % of fit]``."""
    rows = {}
    for line in report.splitlines()[3:]:
        *name, seconds, calls, per_call, share = line.split()
        rows[" ".join(name)] = [seconds, calls, per_call, share]
    return rows


def test_the_simple_table_has_the_loop_regions_and_each_callbacks_handlers(tmp_path):
    out = io.StringIO()
    trainer = _fit(tmp_path, SimpleProfiler(file=out))
    report = out.getvalue()
    assert report.strip() == trainer.profiler.report
    rows = _rows(report)
    assert rows["fit"][1:] == ["1", rows["fit"][2], "100.00"]
    calls = {name: int(row[1]) for name, row in rows.items()}
    assert calls["train"] == 2 and calls["validation"] == 3  # each phase as a whole: the sanity check, 2 epochs
    assert calls["train: Classifier.fit"] == calls["train: batch to device"] == 16
    assert calls["train: waiting for the loader"] == 18  # 8 batches and the end, per epoch
    assert calls["validation: Classifier.evaluate"] == 2 + 2 * 2
    # by callback and event
    assert calls["CSVLogger.on_batch_trained"] == 16 and calls["CSVLogger.on_iterated"] == 2
    assert calls["ModelCheckpoint.on_iterated"] == 2 and calls["CSVLogger.on_fit_started"] == 1
    assert calls["CSVLogger.on_fit_ended"] == 1
    shares = [float(row[3]) for row in rows.values()]
    assert all(0 <= share <= 100 for share in shares)
    seconds = [float(row[0]) for row in rows.values()]
    assert seconds == sorted(seconds, reverse=True)


def test_a_second_fit_starts_a_new_table(tmp_path):
    profiler = SimpleProfiler(file=io.StringIO())
    trainer = _fit(tmp_path, profiler)
    trainer.fit(Classifier(), make_data(samples=16))  # two epochs of 4 batches, no validation
    rows = _rows(profiler.report)
    assert rows["train: Classifier.fit"][1] == "8" and "validation" not in rows


def test_by_name_on_the_global_rank_zero_it_prints_to_stderr(tmp_path, capsys):
    trainer = _fit(tmp_path, "simple", epochs=1)
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert "SimpleProfiler: where the fit's time went" in capsys.readouterr().err


def test_without_a_profiler_handlers_are_not_wrapped():
    class Hook(Callback):
        def on_batch_trained(self, event):
            pass

    hook = Hook()
    assert Trainer(**QUIET).profiler is None
    plain = EventBus([hook], [hook.subscriptions()])
    assert plain.handlers(BatchTrained) == (hook.on_batch_trained,)
    names = []
    timed = EventBus([hook], [hook.subscriptions()], lambda handler, name: names.append(name) or handler)
    assert timed.handlers(BatchTrained) == (hook.on_batch_trained,) and names == ["Hook.on_batch_trained"]


def test_the_pytorch_profiler_writes_a_trace_and_prints_both_tables(tmp_path):
    out = io.StringIO()
    trainer = _fit(tmp_path, PyTorchProfiler(wait=1, warmup=1, active=2, file=out), epochs=1)
    profiler = trainer.profiler
    assert profiler.trace_dir == tmp_path / "profiler" / "version_0"
    (trace,) = profiler.traces
    assert trace.parent == profiler.trace_dir and trace.name.startswith("rank0.") and trace.suffix == ".json"
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert {"train: Classifier.fit", "train: batch to device", "CSVLogger.on_batch_trained"} <= names
    assert sum(name.startswith("ProfilerStep#") for name in names if name) == 2  # the active steps
    report = out.getvalue()
    assert "where the fit's time went" in report and "torch.profiler: 2 step(s) recorded" in report
    assert "Self CPU" in report
    _fit(tmp_path, PyTorchProfiler(file=io.StringIO()), epochs=1)
    assert (tmp_path / "profiler" / "version_1").is_dir()  # the next fit, the next version


def test_too_few_steps_for_the_schedule_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"ran 2 training step\(s\), and the schedule records from step 5 on"):
        _fit(tmp_path, PyTorchProfiler(wait=2, warmup=2, file=io.StringIO()), epochs=1, samples=8)


@pytest.mark.parametrize(
    ("profiler", "error", "match"),
    [
        ("advanced", ValueError, r"profiler='advanced' is invalid; valid: None, 'simple', 'pytorch'"),
        (3, TypeError, "profiler=3 is a int"),
    ],
    ids=["unknown-name", "wrong-type"],
)
def test_bad_profiler_arguments(profiler, error, match):
    with pytest.raises(error, match=match):
        Trainer(profiler=profiler)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match=r"PyTorchProfiler: active=0 is invalid; valid: an int >= 1"):
        PyTorchProfiler(active=0)
    with pytest.raises(ValueError, match=r"wait=-1 is invalid"):
        PyTorchProfiler(wait=-1)


def test_a_profiled_fit_trains_exactly_as_an_unprofiled_one(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _fit(tmp_path / "a", None)
        torch.manual_seed(0)
        aggregate = Classifier()
        Trainer(max_epochs=2, profiler=SimpleProfiler(file=io.StringIO()), **QUIET).fit(
            aggregate, [("train", make_data(samples=32)), ("validation", make_data(samples=8, seed=1))]
        )
    del plain
    torch.manual_seed(0)
    reference = Classifier()
    Trainer(max_epochs=2, **QUIET).fit(
        reference, [("train", make_data(samples=32)), ("validation", make_data(samples=8, seed=1))]
    )
    assert all(torch.equal(a, b) for a, b in zip(aggregate.parameters(), reference.parameters(), strict=True))
