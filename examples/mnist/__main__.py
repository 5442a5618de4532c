"""``python -m examples.mnist``: train the seed's classifier with the Trainer (see :mod:`examples.mnist.cli`).

Run ``python -m examples.mnist --help`` for the options; with none it trains on scikit-learn's bundled digits.
"""

from __future__ import annotations

import logging

from examples.mnist.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
