"""Where this process sits among the processes of a run, read from the variables ``torchrun`` sets.

``torchrun`` (``python -m torch.distributed.run``) and most cluster launchers describe each process with
environment variables: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (required by the ``env://``
rendezvous of ``torch.distributed.init_process_group``), and ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``GROUP_RANK`` (one node's view). See "torchrun (Elastic Launch)" in the PyTorch docs; Lightning Fabric's
``TorchElasticEnvironment`` reads the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LAUNCH_VARIABLES", "ProcessEnvironment", "cpu_count"]

LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The variables whose presence means that a launcher started this process as one rank of a run."""


@dataclass(frozen=True, slots=True)
class ProcessEnvironment:
    """This process's place in a run. Ranks are 0-based.

    Attributes:
        global_rank: index of this process among all processes (``RANK``).
        local_rank: index among the processes of this machine (``LOCAL_RANK``); it picks the GPU.
        world_size: number of processes of the run (``WORLD_SIZE``).
        local_world_size: number of processes on this machine (``LOCAL_WORLD_SIZE``).
        node_rank: index of this machine (``GROUP_RANK``, else ``NODE_RANK``).
        master_addr: host of the rendezvous store (``MASTER_ADDR``).
        master_port: TCP port of the rendezvous store (``MASTER_PORT``).
    """

    global_rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ProcessEnvironment | None:
        """Read the environment a launcher set.

        Variables a launcher may leave out get the single-node defaults: ``LOCAL_WORLD_SIZE`` = ``WORLD_SIZE``,
        ``LOCAL_RANK`` = ``RANK mod LOCAL_WORLD_SIZE``, node rank = ``RANK // LOCAL_WORLD_SIZE``.

        Args:
            environ: the variables (default ``os.environ``).

        Returns:
            The environment, or ``None`` when none of :data:`LAUNCH_VARIABLES` is set (no launcher: a plain
            ``python script.py``).

        Raises:
            ValueError: when only some of :data:`LAUNCH_VARIABLES` are set (naming the missing ones), a value is
                not an integer, or the ranks are out of range.
        """
        env = os.environ if environ is None else environ
        present = [name for name in LAUNCH_VARIABLES if name in env]
        if not present:
            return None
        missing = [name for name in LAUNCH_VARIABLES if name not in env]
        if missing:
            raise ValueError(
                f"the environment sets {', '.join(present)} but not {', '.join(missing)}: a launcher (torchrun) "
                f"sets all of {', '.join(LAUNCH_VARIABLES)}; set the missing ones or unset the others"
            )
        rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local_world_size = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world_size
        local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank % max(local_world_size, 1)
        node_key = "GROUP_RANK" if "GROUP_RANK" in env else "NODE_RANK" if "NODE_RANK" in env else None
        node_rank = _int(env, node_key) if node_key else rank // max(local_world_size, 1)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size}: valid ranks are 0..WORLD_SIZE-1")
        if not 0 <= local_rank < max(local_world_size, 1):
            raise ValueError(
                f"LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE={local_world_size}: valid local ranks are "
                "0..LOCAL_WORLD_SIZE-1"
            )
        return cls(
            global_rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=node_rank,
            master_addr=env["MASTER_ADDR"],
            master_port=_int(env, "MASTER_PORT"),
        )


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
