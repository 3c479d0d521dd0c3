"""Figures (matplotlib; ``pip install velopyro[plot]``).

Every function takes the AnnData first (:func:`loss_curve` also takes a model), returns the
:class:`matplotlib.figure.Figure` and saves it when ``save="path.png"`` is given.

- :func:`phase_portraits`: Ms vs Mu per gene, coloured by the inferred state, with the fitted kinetics
- :func:`latent_time`: an embedding coloured by ``obs["latent_time"]``, the clusters named where they lie
- :func:`velocity_stream`: velocity streamlines on an embedding over the clusters
- :func:`loss_curve`: training and validation loss per epoch
- :func:`uncertainty`: an embedding coloured by a per-cell uncertainty; :func:`permutation_scores`: the
  permutation scores per cell type (both take ``ax=``, ``show=``, ``save=``, ``color=``)
- posterior predictive checks ``ppc_density``, ``pit_histogram``, ``rootogram`` (from
  ``velopyro.pl._ppc``, loaded on first use)

matplotlib is imported when a figure is drawn, not on ``import velopyro.pl``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._figures import latent_time, loss_curve, phase_portraits, velocity_stream
from ._uncertainty import permutation_scores, uncertainty, velocity_interval

__all__ = ["phase_portraits", "latent_time", "velocity_stream", "loss_curve", "uncertainty", "permutation_scores",
           "velocity_interval"]

_PPC_NAMES = ("ppc_density", "pit_histogram", "rootogram")


def _load_ppc() -> Any:
    """``velopyro.pl._ppc`` (``from . import _ppc``), or None if that module does not exist."""
    try:
        return importlib.import_module(f"{__name__}._ppc")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}._ppc":
            raise
        return None


def __getattr__(name: str) -> Any:
    """Delegate the posterior predictive plots (and any other public name) to ``velopyro.pl._ppc``."""
    if name.startswith("_"):
        raise AttributeError(f"module 'velopyro.pl' has no attribute {name!r}")
    _ppc = _load_ppc()
    if _ppc is None:
        raise AttributeError(f"module 'velopyro.pl' has no attribute {name!r}")
    try:
        return getattr(_ppc, name)
    except AttributeError:
        hint = " (the posterior predictive plots are not implemented yet)" if name in _PPC_NAMES else ""
        raise AttributeError(f"module 'velopyro.pl' has no attribute {name!r}{hint}") from None


def __dir__() -> list[str]:
    _ppc = _load_ppc()
    if _ppc is None:
        return sorted(__all__)
    names = getattr(_ppc, "__all__", None)
    if names is None:
        names = [n for n, v in vars(_ppc).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == _ppc.__name__]
    return sorted(set(__all__) | set(names))
