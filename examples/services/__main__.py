"""``python -m examples.services``: the seed's services-style training system (see :mod:`examples.services.app`)."""

from __future__ import annotations

from examples.services.app import main

if __name__ == "__main__":
    main()
