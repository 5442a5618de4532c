"""``python -m torchsystem_trainer.tracking``: see :mod:`torchsystem_trainer.tracking.cli`."""

from __future__ import annotations

import sys

from torchsystem_trainer.tracking.cli import main

if __name__ == "__main__":
    sys.exit(main())
