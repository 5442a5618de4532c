"""Fixtures of the run store's tests: a registered tiny model, its aggregate, and real stores (SQLite files, and
databases on a throwaway PostgreSQL server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from torch import nn

from tests.tracking import _postgres
from torchsystem_trainer import Aggregate
from torchsystem_trainer.registry import gethash, register


@register
class Net(nn.Module):
    """nn.Linear(features, classes), registered: its hash is the aggregate's identity."""

    def __init__(self, features: int = 4, classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs)


@register(excluded_args=[0])
class SGD(torch.optim.SGD):
    """torch.optim.SGD, registered (its lr... captured)."""


class Model(Aggregate):
    """The seed's classifier over a registered Net; identity: gethash(nn)."""

    def __init__(self, features: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = Net(features, 2)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = SGD(self.nn.parameters(), lr=lr)

    @property
    def id(self) -> str:
        return gethash(self.nn)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


def make_model(seed: int = 0, features: int = 4, lr: float = 0.1) -> Model:
    torch.manual_seed(seed)
    return Model(features, lr)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'runs.db'}"


@pytest.fixture(scope="session")
def postgres_socket() -> Iterator[str]:
    reason = _postgres.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with _postgres.postgres_server() as socket_folder:
        yield socket_folder


def _admin(socket_folder: str):  # type: ignore[no-untyped-def]
    return create_engine(f"postgresql+psycopg://postgres@/postgres?host={socket_folder}", isolation_level="AUTOCOMMIT")


@pytest.fixture
def postgres_url(postgres_socket: str) -> Iterator[str]:
    """A fresh database on the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = _admin(postgres_socket)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))  # a name we generated
    yield f"postgresql+psycopg://postgres@/{name}?host={postgres_socket}"
    admin.dispose()
    admin = _admin(postgres_socket)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception:  # the server was stopped by the test and not restarted: nothing to drop
        pass
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test against a SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))
