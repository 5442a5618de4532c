"""The training loop: a Producer of :mod:`torchsystem_trainer.events`.

``trainer.py`` orchestrates (arguments, the epoch loop, the order of events, launching); ``phases.py`` runs the
per-batch loops, given a ``Run`` (never the Trainer); ``loop_state.py`` holds what the loop has reached
(``trainer.loop``, the one object checkpoints save and restore). ``docs/loop.md`` draws the whole map.
"""

from torchsystem_trainer.trainer.loaders import BatchError
from torchsystem_trainer.trainer.loop_state import LoopState
from torchsystem_trainer.trainer.progress import Progress
from torchsystem_trainer.trainer.seeding import seed_everything
from torchsystem_trainer.trainer.trainer import Trainer

__all__ = ["BatchError", "LoopState", "Progress", "Trainer", "seed_everything"]
