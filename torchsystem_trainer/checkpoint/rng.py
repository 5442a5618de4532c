"""The random-number generators' states as plain data (``weights_only``-loadable), and back.

Covers every generator a training step draws from without being told: Python's ``random``, NumPy's global
generator, torch's CPU generator and the default generator of every CUDA device (and MPS), plus the
``torch.Generator`` objects a ``DataLoader`` holds (its ``generator``, its sampler's and batch sampler's). Lightning
saves none of these (its issue #19764), Keras' ``BackupAndRestore`` neither; without them a resumed run draws other
dropout masks and another data order.
"""

from __future__ import annotations

import array
import random
import warnings
from typing import Any

import torch

__all__ = ["RNGState", "generator_states", "generators_of", "load_generator_states", "load_rng_state", "rng_state"]

RNGState = dict[str, Any]
"""``{"python": [version, int64 tensor [625], gauss], "torch": uint8 tensor, "cuda": [uint8 tensor per device], "mps":
uint8 tensor (when MPS is available), "numpy": [kind, int64 tensor [624], pos, has_gauss, cached]}``."""


def rng_state() -> RNGState:
    """The global generators' states now.

    CUDA states are read only when this process has initialized CUDA (a process that never touched CUDA has drawn
    nothing there), so reading them never creates a CUDA context.

    Returns:
        An :data:`RNGState`.
    """
    version, internal, gauss = random.getstate()
    state: RNGState = {
        # A tensor, not 625 ints: pickled as one storage, it keeps the per-epoch checkpoint and the walk that
        # checks it from visiting every word of the Mersenne Twister's state.
        "python": [version, torch.frombuffer(array.array("q", internal), dtype=torch.int64), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        state["mps"] = mps.get_rng_state()
    try:
        import numpy
    except ImportError:
        return state
    kind, keys, position, has_gauss, cached = numpy.random.get_state(legacy=True)  # a tuple: MT19937 state
    state["numpy"] = [
        str(kind),
        torch.from_numpy(numpy.asarray(keys).astype("int64")),
        int(position),
        int(has_gauss),
        float(cached),
    ]
    return state


def load_rng_state(state: RNGState) -> None:
    """Set the global generators to what :func:`rng_state` returned.

    CUDA states are set for the devices present (a warning names the difference when the checkpoint's machine had
    another number of devices); a checkpoint without NumPy's state leaves NumPy's generator as it is.

    Args:
        state: an :data:`RNGState`.

    Raises:
        KeyError: when ``"python"`` or ``"torch"`` is missing.
    """
    version, internal, gauss = state["python"]
    words = internal.tolist() if isinstance(internal, torch.Tensor) else internal  # a list in older checkpoints
    random.setstate((version, tuple(words), gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count != len(cuda):
            warnings.warn(
                f"the checkpoint holds the random state of {len(cuda)} CUDA device(s), this machine has {count}; "
                f"the first {min(count, len(cuda))} are restored, so random draws on the others differ",
                stacklevel=3,
            )
        for index, device_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(device_state, index)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    if "numpy" in state:
        try:
            import numpy
        except ImportError:
            return
        kind, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached))


def generators_of(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws from: its ``generator``, its ``sampler``'s, its
    ``batch_sampler``'s and that one's ``sampler``'s, each once, in that order.

    Args:
        loader: a ``DataLoader`` or any iterable (which then has none).

    Returns:
        The generators, possibly empty.
    """
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None) if owner is not None else None
        if isinstance(generator, torch.Generator) and not any(generator is known for known in found):
            found.append(generator)
    return found


def generator_states(loader: Any) -> list[torch.Tensor]:
    """The states of :func:`generators_of` ``loader``, in its order (``uint8`` tensors)."""
    return [generator.get_state() for generator in generators_of(loader)]


def load_generator_states(loader: Any, states: list[torch.Tensor], name: str) -> None:
    """Set the generators of ``loader`` to ``states`` (what :func:`generator_states` returned for it).

    Args:
        loader: the loader.
        states: the saved states.
        name: how to call the loader in a warning (``"the 'train' loader"``).

    Warns:
        UserWarning: when the loader now holds another number of generators than the checkpoint's: they are left
            as they are, so its data order may differ from the original run's.
    """
    generators = generators_of(loader)
    if len(generators) != len(states):
        warnings.warn(
            f"{name} holds {len(generators)} torch.Generator(s) but the checkpoint saved {len(states)}; they are "
            f"left as they are, so the data order may differ from the uninterrupted run's",
            stacklevel=3,
        )
        return
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)
