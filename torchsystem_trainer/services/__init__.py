"""Service layer building blocks from the seed: services, producer/consumer and publisher/subscriber.

``Depends`` is re-exported here and from each module of this package, as torchsystem 1.4.9 does.
"""

from torchsystem_trainer.depends import Depends
from torchsystem_trainer.services.prodcon import Consumer, Producer, event
from torchsystem_trainer.services.pubsub import Publisher, Subscriber
from torchsystem_trainer.services.service import Service

__all__ = ["Consumer", "Depends", "Producer", "Publisher", "Service", "Subscriber", "event"]
