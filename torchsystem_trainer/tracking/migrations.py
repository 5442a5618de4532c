"""Bring an older store up to :data:`~torchsystem_trainer.tracking.schema.SCHEMA_VERSION`, one version at a time.

Alembic without its script folder: each migration is a function of an ``alembic.operations.Operations`` bound to
the open transaction (``op.add_column``, ``op.create_index``, ``op.batch_alter_table`` for SQLite's limited
``ALTER TABLE``), registered in :data:`MIGRATIONS` under the version it upgrades *from*. The version lives in the
store's own ``schema_version`` table rather than in Alembic's ``alembic_version``, so a store needs no migration
environment and readers check it with one query. All steps run in the transaction that found the old version, so
a failed migration leaves the store as it was.

Version 1 is the first schema: there is nothing to migrate yet. To change the schema, bump ``SCHEMA_VERSION``,
change ``schema.py`` and add ``MIGRATIONS[old] = function`` doing the same change to an existing store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.operations import Operations
    from sqlalchemy import Connection

__all__ = ["MIGRATIONS", "migrate"]

MIGRATIONS: dict[int, Callable[[Operations], None]] = {}
"""Version N -> the function that upgrades a store from N to N + 1."""


def migrate(connection: Connection, found: int, target: int) -> None:
    """Upgrade the store on ``connection`` (inside its open transaction) from version ``found`` to ``target``.

    Args:
        connection: a connection with a transaction begun; the caller commits.
        found: the store's version (>= 1).
        target: the version to reach (> ``found``).

    Raises:
        RuntimeError: when a step between ``found`` and ``target`` has no migration (a bug of the library).
        sqlalchemy.exc.SQLAlchemyError: whatever a migration's statements raise; the transaction is rolled back.
    """
    missing = [version for version in range(found, target) if version not in MIGRATIONS]
    if missing:
        raise RuntimeError(f"no migration from schema version(s) {missing} to {target}")
    from alembic.migration import MigrationContext  # only when a store is old: Alembic costs ~0.1 s to import
    from alembic.operations import Operations

    operations = Operations(MigrationContext.configure(connection, opts={"render_as_batch": True}))
    for version in range(found, target):
        MIGRATIONS[version](operations)
