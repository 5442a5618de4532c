"""Service layer building blocks from the seed: services, producer/consumer and publisher/subscriber."""

from torchsystem_trainer.services.prodcon import Consumer, Producer, event
from torchsystem_trainer.services.pubsub import Publisher, Subscriber
from torchsystem_trainer.services.service import Service

__all__ = ["Service", "Producer", "Consumer", "event", "Publisher", "Subscriber"]
