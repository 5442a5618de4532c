"""The example's --lr-find: prints the suggestion, writes the plot, trains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.mnist.cli import LRSearch, main


@pytest.mark.slow
def test_lr_find_prints_the_suggestion_and_writes_the_plot(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    search = main(["--lr-find", "--runs-dir", str(tmp_path), "--no-progress-bar"])
    assert isinstance(search, LRSearch)
    assert search.suggestion is not None and 1e-6 <= search.suggestion <= 1.0
    assert len(search.results["lr"]) >= 20
    assert search.plot is not None and search.plot.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert f"suggested learning rate: {search.suggestion:.3g}" in out and str(search.plot) in out
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("events.out.tfevents*"))  # no training
