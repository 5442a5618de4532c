"""A training script as a user writes it, for ``torchrun`` (used by test_fsdp_processes.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 fsdp_script.py OUT

Every rank trains with ``Trainer(strategy="fsdp")``, validates, saves a sharded checkpoint with
``trainer.save_checkpoint`` (every rank its shard), and writes what it holds to ``OUT/rank-<RANK>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    from torch.distributed.tensor import DTensor
    from torch.utils.data import DataLoader

    from tests.strategies.test_fsdp_processes import SEED, Wide, datasets, flat_state, metrics
    from torchsystem_trainer import Trainer

    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = Wide()
    trainer = Trainer(strategy="fsdp", max_epochs=2, metrics=metrics(), enable_progress_bar=False)
    trainer.fit(aggregate, [("train", DataLoader(train, batch_size=2)), ("validation", DataLoader(validation, batch_size=3))])
    results = trainer.validate(aggregate, DataLoader(validation, batch_size=3))
    trainer.save_checkpoint(out / "saved.ckpt")
    full = trainer.strategy.aggregate_state(aggregate)["modules"]  # every rank: a collective
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "sharded": all(isinstance(p, DTensor) for p in aggregate.parameters()),
        "weights": flat_state(full).tolist() if trainer.is_global_zero else None,
        "metrics": trainer.callback_metrics,
        "validate": results,
    }
    (out / f"rank-{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
