"""A fitted model as plain pieces: what posterior checks and conversions need, without the AnnData class.

:class:`FittedModel` holds the Pyro model and guide, the data they were fitted on, the configuration, the
training history and split, the device and the cell and gene names. :class:`~velopyro.api.VeloPyro`
builds one (:attr:`VeloPyro.fitted <velopyro.api.VeloPyro.fitted>`); :mod:`velopyro.ppc` and
:mod:`velopyro.convert` take either, through :func:`as_fitted`, so they never import the AnnData-facing
class (no import circle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .data import VeloData

__all__ = ["FittedModel", "SupportsFitted", "FittedLike", "as_fitted"]


@dataclass
class FittedModel:
    """The pieces of a fitted velopyro model.

    Attributes
    ----------
    model, guide
        The fitted :class:`~velopyro.model.VeloVIModel` and its guide (a :class:`~velopyro.guide.VeloVIGuide` or
        any registered guide, :func:`velopyro.guide.register_guide`).
    data
        The inputs they were fitted on (:class:`~velopyro.data.VeloData`).
    config
        The model configuration (``likelihood``, ``state_coupling``, ``n_latent``, ``t_max``, ...), as
        :attr:`VeloPyro.config <velopyro.api.VeloPyro.config>`.
    var_names, obs_names
        Gene and cell names, in the order of the data's columns and rows.
    history
        The training history (:func:`velopyro.train.train_svi`).
    train_indices, validation_indices
        Cell positions of the training split.
    device
        Where posterior queries compute.
    """

    model: torch.nn.Module
    guide: torch.nn.Module
    data: VeloData
    config: dict[str, Any]
    var_names: Sequence[str]
    obs_names: Sequence[str]
    history: dict[str, Any] = field(default_factory=dict)
    train_indices: np.ndarray = field(default_factory=lambda: np.arange(0))
    validation_indices: np.ndarray = field(default_factory=lambda: np.arange(0))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.data.u.shape[0])

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return int(self.data.u.shape[1])

    @property
    def likelihood(self) -> Any:
        """The observation model (:class:`~velopyro.likelihoods.Likelihood`) of :attr:`model`."""
        return self.model.likelihood

    def get_rates(self) -> dict[str, np.ndarray]:
        """Point estimates of the per-gene parameters, as :meth:`VeloPyro.get_rates <velopyro.api.VeloPyro.get_rates>`.

        Returns
        -------
        dict of str to numpy.ndarray
            ``alpha``, ``beta``, ``gamma``, ``t_s`` and the likelihood's parameters, each ``(genes,)``.
        """
        with torch.no_grad():
            out = {k: v.detach().cpu().numpy() for k, v in self.model.rates().items()}
            out.update({k: v.detach().cpu().numpy() for k, v in self.likelihood.gene_params().items()})
        return out


@runtime_checkable
class SupportsFitted(Protocol):
    """Anything with a ``fitted`` attribute returning a :class:`FittedModel` (e.g. a fitted ``VeloPyro``)."""

    @property
    def fitted(self) -> FittedModel:  # pragma: no cover - protocol
        """The fitted pieces."""


#: What :mod:`velopyro.ppc` and :mod:`velopyro.convert` accept as a model.
FittedLike = FittedModel | SupportsFitted


def as_fitted(obj: FittedModel | SupportsFitted) -> FittedModel:
    """The :class:`FittedModel` of ``obj``: itself, or its ``fitted`` attribute.

    Parameters
    ----------
    obj
        A :class:`FittedModel` or a fitted :class:`~velopyro.api.VeloPyro`.

    Returns
    -------
    FittedModel
        The pieces.

    Raises
    ------
    RuntimeError
        If ``obj`` is a model that is not fitted yet (raised by its ``fitted`` attribute).
    TypeError
        If ``obj`` is neither.
    """
    if isinstance(obj, FittedModel):
        return obj
    fitted = getattr(obj, "fitted", None)  # a model not fitted yet raises its RuntimeError here
    if not isinstance(fitted, FittedModel):
        raise TypeError(f"expected a fitted VeloPyro or a velopyro.fitted.FittedModel, got {type(obj).__name__}.")
    return fitted
