"""Example data: the real pancreas data shipped with velopyro, and two simulators."""

from __future__ import annotations

from ._branching import simulate_branching
from ._pancreas import pancreas
from ._simulate import simulate, simulate_to_disk

__all__ = ["pancreas", "simulate", "simulate_branching", "simulate_to_disk"]
