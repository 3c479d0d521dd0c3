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

