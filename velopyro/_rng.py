"""Seeded sections that leave the caller's random state and Pyro's global state as they were.

Pyro draws from torch's global generator (and ``pyro.set_rng_seed`` seeds torch, numpy and ``random``),
and Pyro's effect-handler stack is one list per process, not per thread. :func:`seeded` therefore

- holds one process-wide re-entrant lock, so fits and posterior queries run one at a time (a second
  thread waits instead of corrupting the first one's trace);
- saves the global torch, numpy and ``random`` states, seeds all three from ``seed`` (when given) and
  restores the saved states on exit, whatever happens inside.

So ``np.random.seed(123); model.get_velocity(); np.random.rand()`` gives the same number as without
the query in between.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyro
import torch

__all__ = ["seeded", "check_seed", "SEED_MAX"]

#: Largest accepted seed (numpy's legacy seeding takes 32-bit values).
SEED_MAX = 2**32 - 1

_LOCK = threading.RLock()


def check_seed(seed: int | None, *, allow_none: bool = True) -> None:
    """Raise a one-line ``VelopyroInputError`` unless ``seed`` is an integer in ``[0, 2**32 - 1]``.

    Parameters
    ----------
    seed
        The seed to check.
    allow_none
        Accept ``None`` (no reseeding).
    """
    from ._validation import VelopyroInputError

    if seed is None and allow_none:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= SEED_MAX:
        raise VelopyroInputError(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}.")


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the body under the process-wide velopyro lock with the global generators seeded from ``seed``.

    Parameters
    ----------
    seed
        Seed for torch, numpy and ``random`` inside the body (``None``: not reseeded; the body then
        advances the caller's streams, as any torch code would).

    Yields
    ------
    None
        Inside the body; on exit the global states are restored when ``seed`` was given.
    """
    check_seed(seed)
    with _LOCK:
        if seed is None:
            yield
            return
        torch_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state pyro seeds)
        py_state = random.getstate()
        try:
            pyro.set_rng_seed(int(seed))
            yield
        finally:
            torch.set_rng_state(torch_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
