"""A training process for the run store's process tests: ``python track_script.py URL EXPERIMENT EPOCHS
[--ready-at STEP] [--sleep SECONDS] [--heartbeat SECONDS] [--go FILE]``.

Fits the tests' tiny model with a RunTracker; prints ``READY`` (flushed) after training batch ``--ready-at``; waits
``--sleep`` seconds after each batch; waits for ``--go`` to exist before fitting (so two processes start together).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_data  # noqa: E402
from tests.tracking.conftest import make_model  # noqa: E402
from torchsystem_trainer import Trainer  # noqa: E402
from torchsystem_trainer.callbacks import Callback  # noqa: E402
from torchsystem_trainer.tracking import RunTracker  # noqa: E402


class Pace(Callback):
    def __init__(self, ready_at: int, sleep: float) -> None:
        self.ready_at, self.sleep = ready_at, sleep

    def on_batch_trained(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.step == self.ready_at:
            print("READY", flush=True)
        if self.sleep:
            time.sleep(self.sleep)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("experiment")
    parser.add_argument("epochs", type=int)
    parser.add_argument("--ready-at", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--go", type=Path, default=None)
    options = parser.parse_args()
    tracker = RunTracker(options.url, experiment=options.experiment, heartbeat_interval=options.heartbeat,
                         retry_timeout=60.0)
    if options.go is not None:
        deadline = time.monotonic() + 60
        while not options.go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    trainer = Trainer(callbacks=[tracker, Pace(options.ready_at, options.sleep)], max_epochs=options.epochs,
                      enable_progress_bar=False)
    trainer.fit(make_model(), [("train", make_data(samples=64)), ("validation", make_data(seed=1))])
    print(f"DONE {tracker.run_id} {tracker.pending}", flush=True)


if __name__ == "__main__":
    main()
