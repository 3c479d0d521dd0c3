"""Example data: the real pancreas data shipped with velopyro, and a simulator."""

from __future__ import annotations

from ._pancreas import pancreas
from ._simulate import simulate, simulate_to_disk

__all__ = ["pancreas", "simulate", "simulate_to_disk"]
