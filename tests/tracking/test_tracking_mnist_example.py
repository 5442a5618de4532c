"""The MNIST example with the run store: a second run continues the same model (its epoch from the store, its
weights from the newest checkpoint the store recorded) and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.mnist.cli import main
from torchsystem_trainer.checkpoint import load_file
from torchsystem_trainer.tracking import Tracker


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_second_run_continues_the_model_from_the_store(tmp_path: Path, capsys, monkeypatch) -> None:
    argv = ["--runs-dir", str(tmp_path), "--epochs", "2", "--no-progress-bar", "--hidden-size", "16"]
    first = main(argv)
    out = capsys.readouterr().out
    assert "new model " in out and "training epochs 0 to 1" in out
    assert (first.start_epoch, first.epochs, first.restored_from) == (0, 2, None)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with Tracker(url) as store:
        (model,) = store.models()
        assert model.epoch == 2
        newest = [c for c in store.checkpoints(model=model.hash) if Path(c.path).is_file()][-1]
    assert newest.epoch == 2 and load_file(newest.path)["aggregate"]["epoch"] == 2

    second = main(argv)
    out = capsys.readouterr().out
    assert f"continuing model {model.hash} from epoch 2 (weights of {newest.path}): training epochs 2 to 3" in out
    assert (second.start_epoch, second.restored_from, second.epochs >= 2) == (2, newest.path, True)
    with Tracker(url) as store:
        runs = store.runs(model=model.hash)
        assert [r.id for r in runs] == [first.run_id, second.run_id]
        assert runs[1].start_epoch == 2
        epochs = sorted({m.epoch for m in store.metrics(second.run_id, phase="train")})
        assert epochs[0] == 2 and epochs == list(range(2, 2 + second.epochs))
        assert store.current_epoch(model.hash) == 2 + second.epochs
        losses = {(m.run, m.epoch): m.value for m in store.metrics(model=model.hash, phase="train", name="loss")}
    # the weights continued: the second run's first epoch starts far below where the first run's started
    assert losses[(second.run_id, 2)] < losses[(first.run_id, 1)] < losses[(first.run_id, 0)]
