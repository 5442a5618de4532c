"""Benchmarks: the Trainer side by side with a hand-written loop and with Lightning (see ``benchmarks/README.md``).

Not part of the installed package and not a test suite: run ``python -m benchmarks.compare`` (or ``make bench``).
"""
