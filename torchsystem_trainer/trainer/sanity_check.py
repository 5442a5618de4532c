"""The sanity check: a few validation batches before a fit's first training batch (Lightning's
``num_sanity_val_steps``), so that an error in the aggregate's ``evaluate`` or the validation loader shows in seconds
rather than after a whole training epoch.

What it fires, and what it leaves:

* ``SanityCheckStarted(batches)``, then ``SanityCheckEnded(results)``; between them the aggregate's ``evaluate``
  runs under ``torch.no_grad()`` (not ``inference_mode``, as the validations after training has begun: this is
  the process's first forward, and a buffer a module creates then, or a sharded strategy's gathered parameters,
  would be an inference tensor that training cannot use; Lightning uses ``no_grad`` under FSDP for that reason) with
  ``trainer.sanity_checking`` set. No ``PhaseStarted``,
  ``BatchValidated`` or ``Validated`` fires (Lightning calls its validation hooks with
  ``trainer.sanity_checking`` set and relies on every consumer to check it; here nothing that reacts to a
  validation can mistake these batches for one), and the results reach no ``callback_metrics``.
* The global random generators and the validation loader's own generators are put back as they were (as
  Lightning's ``isolate_rng`` does around its sanity check), so the fit draws the same numbers with and without the
  check: the same data order, dropout masks and weights. One exception: a validation ``DataLoader`` with
  ``persistent_workers=True`` creates its iterator (and draws its base seed) during the check instead of at the
  first validation.

The Trainer skips it on a fit resumed from a checkpoint (its loaded state would be disturbed for nothing, as
Lightning's ``_run_sanity_check`` skips it when restarting), under ``fast_dev_run``, without a validation loader,
and when the fit has nothing to train.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from torchsystem_trainer.checkpoint import generator_states, load_generator_states, load_rng_state, rng_state
from torchsystem_trainer.events import SanityCheckEnded, SanityCheckStarted
from torchsystem_trainer.trainer.loaders import limit_of
from torchsystem_trainer.trainer.phases import Run, evaluate_batches, planned_batches

__all__ = ["sanity_check"]

_RESULTS = "sanity_check"  # the loop's results slot for the check, apart from the validation phase's


def sanity_check(run: Run, aggregate: Any, loader: Iterable[Any], steps: int, limit: int | float | None) -> None:
    """Evaluate the first ``steps`` batches of the validation ``loader`` (``-1``: all of them), at most
    ``limit_val_batches``; see the module docstring.

    Args:
        run: the run.
        aggregate: the aggregate, set up.
        loader: the validation loader (as the strategy adapted it).
        steps: ``num_sanity_val_steps`` (``-1`` or an int >= 1).
        limit: ``limit_val_batches``.

    Raises:
        Exception: whatever the aggregate or the loader raises (the fit then ends ``"exception"``); the generators
            are put back first.
    """
    count = limit_of(loader, limit, "limit_val_batches")
    batches = None if steps < 0 else steps
    if count is not None:
        batches = count if batches is None else min(batches, count)
    if batches == 0:
        return
    loop, bus, source = run.loop, run.bus, run.source
    rng, generators = rng_state(), generator_states(loader)
    loop.sanity_checking = True
    try:
        bus.emit(SanityCheckStarted, source, aggregate, planned_batches(loader, batches))
        results = evaluate_batches(
            run, aggregate, loader, loop.results(_RESULTS, "validation"), "validation", batches, None,
            grad_mode=torch.no_grad,
        )
        bus.emit(SanityCheckEnded, source, aggregate, results)
    finally:
        loop.sanity_checking = False
        load_rng_state(rng)
        load_generator_states(loader, generators, "the 'validation' loader")
