"""A training script as a user writes it, for ``torchrun`` (used by test_ddp_processes.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_script.py OUT [ACCELERATOR [PRECISION]]

Every rank trains (``Trainer(strategy=DDPStrategy(...))``, as ``strategy="ddp"``), validates, and writes what it
holds to ``OUT/rank-<RANK>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from tests.strategies.test_ddp_processes import SEED, datasets, flat, metrics
from torchsystem_trainer import Trainer
from torchsystem_trainer.strategies import DDPStrategy


def main(out: Path, accelerator: str = "cpu", precision: str = "32-true") -> None:
    import torch

    from tests.conftest import Classifier

    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = Classifier()
    strategy = DDPStrategy(accelerator=accelerator, precision=precision)  # devices="auto": torchrun's processes
    trainer = Trainer(strategy=strategy, max_epochs=2, metrics=metrics(), enable_progress_bar=False)
    trainer.fit(aggregate, [("train", DataLoader(train, batch_size=4)), ("validation", DataLoader(validation, batch_size=3))])
    results = trainer.validate(aggregate, DataLoader(validation, batch_size=3))
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "weights": flat(aggregate).cpu().tolist(),
        "metrics": trainer.callback_metrics,
        "validate": results,
    }
    (out / f"rank-{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
