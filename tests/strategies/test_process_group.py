"""The default process group's life (strategies/process_group.py): a group joined with a store is its joiner's to
destroy; a group joined from a launcher's environment is the one ``destroy_launcher_group`` ends."""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_only

from torchsystem_trainer.strategies.process_group import destroy_group, destroy_launcher_group, join_group

CPU = torch.device("cpu")
TIMEOUT = timedelta(seconds=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_group_joined_with_a_store_is_not_the_launchers():
    join_group("gloo", TIMEOUT, CPU, dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized() and dist.get_world_size() == 1
    assert rank_zero_only.rank == 0
    destroy_launcher_group()  # what a failed launch does: it must leave a group it did not join alone
    assert dist.is_initialized()
    destroy_group()
    assert not dist.is_initialized()


def test_a_group_joined_from_the_launchers_environment_is_ended_by_destroy_launcher_group(monkeypatch):
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                        "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    join_group("gloo", TIMEOUT, CPU)
    assert dist.is_initialized() and dist.get_rank() == 0
    destroy_launcher_group()
    assert not dist.is_initialized()
    destroy_launcher_group()  # once ended, a second call (the exit hook) does nothing
    assert not dist.is_initialized()
