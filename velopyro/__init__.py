"""velopyro: veloVI RNA velocity as a Pyro probabilistic program.

Public names (loaded on first use, so ``import velopyro`` stays fast):

- :class:`VeloPyro`: the AnnData-facing model (fit, velocity, latent time, states, save/load)
- :mod:`velopyro.pp`: preprocessing from raw counts to Ms/Mu in [0, 1]
- :mod:`velopyro.pl`: figures (phase portraits, latent time, velocity stream, loss curve, PPC)
- :mod:`velopyro.datasets`: the bundled pancreas data and the simulator
- :mod:`velopyro.likelihoods`: observation models (Normal, Poisson, negative binomial)
- :mod:`velopyro.kinetics`: the kinetics objects and their closed forms (eq. 1-12); a new one is a
  registered :class:`~velopyro.kinetics.Kinetics` subclass (:func:`register_kinetics`)
- :mod:`velopyro.ppc` / :mod:`velopyro.convert`: posterior predictive checks and ``to_arviz``
- :mod:`velopyro.covariates`: batch covariates (``VeloPyro(adata, batch_key=...)``) and ``batch_mixing_score``
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"pp", "pl", "tl", "datasets", "likelihoods", "kinetics", "model", "guide", "train", "posterior",
               "nn", "api", "cli", "distributions", "ppc", "convert", "data", "fitted",
               "coupling", "covariates"}
_ATTRS = {"VeloPyro": "api", "register_kinetics": "kinetics"}

__all__ = ["VeloPyro", "register_kinetics", "pp", "pl", "tl", "datasets", "likelihoods", "kinetics", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _ATTRS:
        return getattr(importlib.import_module(f".{_ATTRS[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'velopyro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
