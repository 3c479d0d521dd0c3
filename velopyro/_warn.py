"""Warnings that point at the user's line: the ``stacklevel`` of the first frame outside velopyro.

A fixed ``stacklevel`` is right for one call path only (``train_svi`` called by ``VeloPyro.fit`` needs 3,
called directly 2), and ``warnings.warn(skip_file_prefixes=...)`` exists only on Python >= 3.12 (velopyro
supports 3.10). :func:`caller_stacklevel` counts the frames instead.
"""

from __future__ import annotations

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` call in the calling function point at the first
    frame outside the velopyro package (the user's line; 2 when called from outside velopyro)."""
    frame = sys._getframe(1)  # the function about to call warnings.warn: stacklevel 1
    level = 1
    while frame is not None and frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
