"""A training script for ``torchrun`` that fails on purpose, for the fault-tolerance tests (test_elastic.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 --max-restarts=3 elastic_script.py '<json>'

Every rank trains the crash tests' network (dropout, Adam, a per-step LR scheduler, shuffled data augmented from
the global generator) with ``Trainer(strategy=..., seed=123)``, checkpointing every 3 steps and every epoch, and
calls ``fit(..., ckpt_path="last")``, as a user's script does, so a restarted attempt resumes by itself.

``"faults"`` is a list applied in order, each once (a marker file in ``out/faults/`` records that it fired, so the
order holds across restarts and across agents, whose restart counts differ):

* ``{"rank": r, "event": "BatchTrained", "at": step}``: rank ``r`` sends itself ``SIGKILL`` after that step;
* ``{"rank": r, "event": "EpochStarted", "at": epoch}``: ... when that epoch starts;
* ``{"rank": r, "event": "torn", "at": n}``: ... in its ``n``-th ``torch.save`` of the attempt, half the file written;
* ``{"rank": r, "event": "replace", "at": n}``: ... in its ``n``-th ``os.replace`` (a complete file not yet renamed);
* ``{"rank": r, "event": "freeze", "at": step}``: rank ``r`` writes ``out/frozen.json`` (its pid and its agent's),
  then stops its agent and itself with ``SIGSTOP``: a node that stops answering without closing its connections;
* ``{"rank": r, "event": "slow", "at": step}``: rank ``r`` waits after that step until its own watchdog and every
  other rank's have reported the stall (an event, not a sleep), then goes on.

Each attempt appends ``restart=<TORCHELASTIC_RESTART_COUNT> rank=<RANK> group=<GROUP_RANK>`` to ``out/attempts.log``;
at the end every rank writes ``out/rank-<RANK>.pt`` (its weights and counters; under FSDP the full weights are gathered
to rank 0, and the other ranks' files hold none).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.checkpoint.train_script import CLASSES, FEATURES, Augmented, Net, _kill_in_writes
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint import save_atomic
from torchsystem_trainer.strategies import DDPStrategy, FSDPStrategy, Strategy

SAMPLES, BATCH, EPOCHS = 64, 4, 3  # 8 batches per rank and epoch on 2 processes: 24 steps


def make_strategy(name: str, config: dict[str, Any]) -> Strategy:
    """The strategy under test, by name."""
    options = {"timeout": float(config.get("timeout", 60)), "collective_warning": config.get("watchdog")}
    if name == "ddp":
        return DDPStrategy(**options)
    if name == "fsdp":
        return FSDPStrategy(**options)
    raise ValueError(f"elastic_script: strategy={name!r} is unknown; valid: 'ddp', 'fsdp'")


def loaders() -> list[tuple[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    targets = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    train = DataLoader(Augmented(inputs, targets), batch_size=BATCH, shuffle=True)
    validation = DataLoader(TensorDataset(inputs[:16], targets[:16]), batch_size=BATCH)
    return [("train", train), ("validation", validation)]


class Faults(Callback):
    """Applies this rank's armed fault (the first whose marker is missing), once; after a fault the process survives
    (``slow``), the next one is armed."""

    def __init__(self, config: dict[str, Any], out: Path, rank: int) -> None:
        self.config, self.out, self.rank = config, out, rank

    def _fire(self, fault: dict[str, Any], marker: Path) -> None:
        marker.touch()
        event = fault["event"]
        if event == "freeze":
            agent = os.getppid()
            save_atomic({"worker": os.getpid(), "agent": agent}, self.out / "frozen.pt")
            os.kill(agent, signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGSTOP)
        elif event == "slow":
            self._wait_for_reports()
        else:
            os.kill(os.getpid(), signal.SIGKILL)

    def _wait_for_reports(self) -> None:
        """Block (as a stuck rank would) until every rank's watchdog has reported the stall."""
        watchdog = self.strategy.watchdog
        assert watchdog is not None, "the watchdog is off"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(watchdog.reports_of(rank) >= 1 for rank in range(watchdog.world_size)):
                return
            time.sleep(0.05)
        raise AssertionError("the watchdogs did not report the stall within 60 s")

    def _check(self, event: str, at: int) -> None:
        fault, marker = armed_fault(self.config, self.out, self.rank)
        if fault is not None and marker is not None and fault["event"] == event and fault["at"] == at:
            self._fire(fault, marker)

    def on_fit_started(self, event: Any) -> None:
        self.strategy = event.trainer.strategy

    def on_batch_trained(self, event: Any) -> None:
        for kind in ("BatchTrained", "freeze", "slow"):
            self._check(kind, event.step)

    def on_epoch_started(self, event: Any) -> None:
        self._check("EpochStarted", event.epoch)


def armed_fault(config: dict[str, Any], out: Path, rank: int) -> tuple[dict[str, Any] | None, Path | None]:
    """The first fault whose marker is missing, if it is this rank's."""
    folder = out / "faults"
    folder.mkdir(parents=True, exist_ok=True)
    for index, fault in enumerate(config.get("faults", [])):
        marker = folder / f"{index}"
        if marker.exists():
            continue
        return (fault, marker) if fault["rank"] == rank else (None, None)
    return None, None


def main(config: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    out = Path(config["out"])
    rank = int(os.environ["RANK"])
    with (out / "attempts.log").open("a") as log:
        log.write(
            f"restart={os.environ.get('TORCHELASTIC_RESTART_COUNT')} rank={rank} group={os.environ.get('GROUP_RANK')}\n"
        )
    fault, marker = armed_fault(config, out, rank)
    if fault is not None and fault["event"] in ("torn", "replace"):
        _kill_in_writes(fault["event"], int(fault["at"]))
        assert marker is not None
        marker.touch()  # fired or not, this attempt's writes decide; a later attempt moves on
    checkpoint = ModelCheckpoint(
        config["dirpath"],
        every_n_steps=3,
        every_n_epochs=1,
        save_top_k=2,
        save_last=True,
        async_save=bool(config.get("async_save", False)),
    )
    callbacks: list[Any] = [Faults(config, out, rank), checkpoint]
    torch.manual_seed(0)
    aggregate = Net()
    trainer = Trainer(
        strategy=make_strategy(config.get("strategy", "ddp"), config),
        callbacks=callbacks,
        max_epochs=EPOCHS,
        seed=123,
        enable_progress_bar=False,
    )
    trainer.fit(aggregate, loaders(), ckpt_path="last")
    sharded = isinstance(trainer.strategy, FSDPStrategy)  # gathered to rank 0 (every rank takes part), plain tensors
    weights = trainer.strategy.aggregate_state(aggregate)["modules"] if sharded else aggregate.state_dict()
    result = {
        "weights": weights,
        "epoch": trainer.progress.epoch,
        "global_step": trainer.progress.global_step,
        "world_size": trainer.world_size,
    }
    save_atomic(result, out / f"rank-{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
