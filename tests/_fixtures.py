"""Helpers shared by the test modules and ``benchmarks/test_thresholds.py`` (not a test module).

The thread count of the fits that pin one: ``VELOPYRO_TEST_THREADS`` when set (CI runs the suite once with 1
and once with 2), else 1. A fit's numbers depend on the thread count (other reduction orders), so a margin
read off one-thread fits is checked on two threads too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def fit_threads() -> int:
    """Torch threads for the fixtures' fits: ``VELOPYRO_TEST_THREADS``, else 1."""
    return int(os.environ.get("VELOPYRO_TEST_THREADS", "1"))


@contextlib.contextmanager
def fit_threads_context() -> Iterator[int]:
    """Set torch's thread count to :func:`fit_threads` inside the block, then restore it."""
    before = torch.get_num_threads()
    n = fit_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


#: For the test modules whose fits stop at a small max_epochs on purpose (a test needs a fitted model, not a
#: converged one): velopyro's "not converged" warning is expected there and not printed. A test that checks
#: the warning catches it with pytest.warns (which records it regardless of this filter).
SHORT_FITS = "ignore:training reached max_epochs=.* before early stopping:UserWarning"
