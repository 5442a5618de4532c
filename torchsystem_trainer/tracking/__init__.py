"""The run store: every model, run and metric in a real database, keyed by the model's registry identity.

``RunTracker`` (a callback) writes; ``Tracker`` reads; ``python -m torchsystem_trainer.tracking`` prints and plots.
Needs the ``tracking`` extra (SQLAlchemy; psycopg for PostgreSQL): ``pip install torchsystem-trainer[tracking]``.
"""

from torchsystem_trainer.tracking.describe import ModelIdentityError
from torchsystem_trainer.tracking.engine import SchemaVersionError, StoreError, default_url
from torchsystem_trainer.tracking.records import (
    Checkpoint,
    Experiment,
    Iteration,
    Metric,
    Model,
    Module,
    Records,
    Run,
)
from torchsystem_trainer.tracking.run_tracker import RunTracker
from torchsystem_trainer.tracking.schema import SCHEMA_VERSION
from torchsystem_trainer.tracking.tracker import RunNotFoundError, Tracker

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "Experiment",
    "Iteration",
    "Metric",
    "Model",
    "ModelIdentityError",
    "Module",
    "Records",
    "Run",
    "RunNotFoundError",
    "RunTracker",
    "SchemaVersionError",
    "StoreError",
    "Tracker",
    "default_url",
]
