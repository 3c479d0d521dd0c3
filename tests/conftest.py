"""Session set-up: torch's thread count from ``VELOPYRO_TEST_THREADS`` when it is set (``.ci/run`` runs the
suite with 1 and with 2), otherwise torch's default. Fixtures that pin a thread count use
``_fixtures.fit_threads()``, which reads the same variable."""

from __future__ import annotations

import os

import torch


def pytest_configure(config):
    n = os.environ.get("VELOPYRO_TEST_THREADS")
    if n:
        torch.set_num_threads(int(n))


def pytest_report_header(config):
    return (f"torch threads: {torch.get_num_threads()} "
            f"(VELOPYRO_TEST_THREADS={os.environ.get('VELOPYRO_TEST_THREADS', 'unset')})")


def pytest_collection_modifyitems(config, items):
    import pytest
    from _fixtures import SHORT_FITS

    for item in items:
        # test_reliability.py fits for a few epochs on purpose, as the modules with pytestmark = SHORT_FITS; it is
        # being edited on another branch, so its filter is added here (move it into the module after the merge)
        if item.path.name == "test_reliability.py":
            item.add_marker(pytest.mark.filterwarnings(SHORT_FITS))
