"""The TensorBoard consumer (the seed's ``src/services/tensorboard.py``).

It writes every metric of the ``Trained`` and ``Validated`` events as ``<model id>/<metric>/<phase>`` at the
model's epoch. It does not open the writer: :func:`writer` is a placeholder that the application layer overrides,
typically with a generator whose code after ``yield`` runs once each handler call has returned::

    def summary_writer():
        yield shared_writer        # opened once by the application
        shared_writer.flush()      # after each event

    consumer.dependency_overrides[writer] = summary_writer
"""

from __future__ import annotations

from torch.utils.tensorboard.writer import SummaryWriter

from examples.services.training import Trained, Validated
from torchsystem_trainer import Depends
from torchsystem_trainer.services import Consumer

__all__ = ["consumer", "deliver_metrics", "writer"]

consumer = Consumer("tensorboard")


def writer() -> SummaryWriter:
    """The writer of the event files.

    Raises:
        NotImplementedError: always; the application layer injects the writer.
    """
    raise NotImplementedError("the writer is injected in the application layer")


@consumer.handler
def deliver_metrics(event: Trained | Validated, writer: SummaryWriter = Depends(writer)) -> None:
    """Write each metric as the scalar ``<model id>/<name>/<phase>`` at step ``model.epoch``.

    A union annotation registers the handler for each of its members.

    Args:
        event: a finished training or validation pass.
        writer: injected.
    """
    for metric in event.metrics:
        writer.add_scalar(f"{event.model.id}/{metric.name}/{event.model.phase}", metric.value, event.model.epoch)
