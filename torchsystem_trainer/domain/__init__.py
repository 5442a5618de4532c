"""Domain layer: aggregates and domain events (the TorchSystem seed's ``torchsystem.domain``)."""

from torchsystem_trainer.domain.aggregate import Aggregate, Phase
from torchsystem_trainer.domain.events import Event, Events

__all__ = ["Aggregate", "Event", "Events", "Phase"]
