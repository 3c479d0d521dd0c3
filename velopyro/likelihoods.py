"""Observation models p(x | kinetic mean) for unspliced and spliced abundance (eq. 20-21).

The model hands a likelihood the kinetic mean of the state it is enumerating (eq. 1-12) and the state
index, and gets a ``torch.distributions.Distribution`` back; nothing else in velopyro knows which
distribution it is. The simulator, the posterior predictive, the log-likelihood for ArviZ and the
model all go through :meth:`Likelihood.dist`.

Writing a new likelihood is one small class::

    class StudentT(velopyro.likelihoods.Normal):
        name = "student_t"

        def dist(self, mean, state, modality, size_factor=None):
            scale = self.state_scale[state] * self.sigma(modality)
            return pyro.distributions.StudentT(4.0, mean, scale)

A likelihood is a ``torch.nn.Module``: the per-gene parameters it creates in :meth:`setup` are fitted
as point estimates with the kinetic rates and saved with the model. Its :meth:`~Likelihood.expected_observation`
(the mean of :meth:`~Likelihood.dist` by default) is what the phase portraits draw, and
:meth:`~Likelihood.load_gene_params` rebuilds it from the values :meth:`~Likelihood.gene_params` reported
(``var["fit_<name>"]`` of a fitted AnnData), so a plot never needs to know a likelihood's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints, transform_to

from . import distributions as vdist
from ._chunks import gene_slices

__all__ = [
    "Likelihood",
    "Normal",
    "Poisson",
    "NegativeBinomial",
    "get_likelihood",
    "register_likelihood",
    "LIKELIHOODS",
]

MODALITIES = ("u", "s")


def _positive_param(init: np.ndarray | torch.Tensor) -> nn.Parameter:
    """An unconstrained parameter whose ``exp`` is ``init`` (the positive constraint's bijection)."""
    init_t = torch.as_tensor(np.asarray(init, dtype=np.float32))
    return nn.Parameter(transform_to(constraints.positive).inv(init_t.clamp_min(1e-6)).clone())


def _positive(raw: torch.Tensor) -> torch.Tensor:
    return transform_to(constraints.positive)(raw)


class Likelihood(nn.Module):
    """Base class of observation models.

    Subclasses set :attr:`name`, create their per-gene parameters in :meth:`setup` and return a
    distribution from :meth:`dist`. Count likelihoods set :attr:`is_count` so that velopyro feeds them
    raw counts and per-cell size factors, and override :meth:`to_kinetic_scale` and
    :meth:`encoder_input`.
    """

    name: str = "base"
    is_count: bool = False
    #: Names of the per-gene parameters as :meth:`gene_params` reports them; by default each is the positive
    #: parameter ``raw_<name>`` (see :meth:`load_gene_params`).
    gene_param_names: tuple[str, ...] = ()

    def setup(self, u: np.ndarray, s: np.ndarray, size_factor_u: np.ndarray, size_factor_s: np.ndarray) -> None:
        """Create per-gene parameters, initialised from the training data.

        Parameters
        ----------
        u, s
            Observed unspliced and spliced abundance, cells x genes (float32).
        size_factor_u, size_factor_s
            Per-cell size factors, shape ``(cells,)`` (ones for non-count likelihoods).
        """
        raise NotImplementedError

    def dist(
        self,
        mean: torch.Tensor,
        state: torch.Tensor,
        modality: str,
        size_factor: torch.Tensor | None = None,
    ) -> dist.TorchDistribution:
        """Distribution of one modality given the kinetic mean of a state.

        Parameters
        ----------
        mean
            Kinetic mean ``u_bar`` or ``s_bar`` of state ``state``, shape ``(..., cells, genes)``.
        state
            State index 0..3 (seed k = 1..4), broadcastable to ``mean``; under enumeration it carries
            the enumeration dimension.
        modality
            ``"u"`` (unspliced) or ``"s"`` (spliced).
        size_factor
            Per-cell size factor of shape ``(cells, 1)``, for count likelihoods.

        Returns
        -------
        pyro.distributions.TorchDistribution
            With batch shape broadcast from ``mean`` and ``state``.
        """
        raise NotImplementedError

    def kinetic_scale_stats(self, x: np.ndarray, size_factor: np.ndarray) -> Any:
        """Per-gene statistics that fix :meth:`to_kinetic_scale`, from a reference set of cells.

        velopyro calls it once on the cells its per-gene statistics come from (on disk: the statistics'
        subsample, see :mod:`velopyro._disk`) and passes the result to :meth:`to_kinetic_scale` for each
        chunk of cells it reads later, so that every chunk lands on the scale of the whole data. A map without
        per-gene statistics (the identity of the Normal likelihood) returns None.

        Parameters
        ----------
        x
            Observations of the reference cells, cells x genes.
        size_factor
            Their size factors, ``(cells,)``.

        Returns
        -------
        Any
            The statistics :meth:`to_kinetic_scale` accepts as ``stats`` (None by default).
        """
        return None

    def to_kinetic_scale(self, x: np.ndarray, size_factor: np.ndarray, stats: Any = None) -> np.ndarray:
        """Map observations to the scale of the kinetic means (used for u*, s* and alpha's start).

        Parameters
        ----------
        x
            Observations, cells x genes.
        size_factor
            Per-cell size factors, ``(cells,)``.
        stats
            What :meth:`kinetic_scale_stats` returned for the reference cells, or None to take the statistics
            from ``x`` itself. A likelihood whose map uses per-gene statistics overrides both methods; one that
            overrides only this method with the two arguments ``x, size_factor`` still works, except for a
            model read from disk whose statistics' subsample leaves cells out (``write_to_adata`` then asks
            for ``stats``).

        Returns
        -------
        numpy.ndarray
            The data on the kinetic scale; the identity for the Normal likelihood.
        """
        return x

    def encoder_input(self, x: torch.Tensor, size_factor: torch.Tensor | None) -> torch.Tensor:
        """Transform observations before the encoder of q(z | u, s) (identity by default).

        Parameters
        ----------
        x
            Observations of one modality, ``(cells, genes)``.
        size_factor
            Per-cell size factors ``(cells, 1)`` or None.

        Returns
        -------
        torch.Tensor
            The encoder's input for this modality.
        """
        return x

    def gene_params(self) -> dict[str, torch.Tensor]:
        """Constrained per-gene parameters, by name (e.g. ``sigma_u``), for reports and ArviZ.

        Returns
        -------
        dict of str to torch.Tensor
            Each of shape ``(genes,)``.
        """
        return {}

    def load_gene_params(self, params: Mapping[str, Any]) -> None:
        """Set the per-gene parameters from their constrained values, as :meth:`gene_params` reports them.

        This rebuilds a fitted likelihood without its training data, e.g. from the ``var["fit_<name>"]``
        columns of a fitted AnnData (:mod:`velopyro.pl`). By default each name of :attr:`gene_param_names`
        is the positive parameter ``raw_<name>``; a likelihood with other parameters overrides this.

        Parameters
        ----------
        params
            ``{name: (genes,) values}`` for every name of :attr:`gene_param_names`.
        """
        for name in self.gene_param_names:
            setattr(self, f"raw_{name}", _positive_param(np.asarray(params[name], dtype=np.float32)))

    def expected_observation(self, mean: torch.Tensor, modality: str,
                             size_factor: torch.Tensor | None = None) -> torch.Tensor:
        """The expected observation ``E[x | kinetic mean]`` on the data's scale (what the plots draw).

        By default the mean of :meth:`dist` (state 0; override where the mean depends on the state).

        Parameters
        ----------
        mean
            Kinetic mean ``u_bar`` or ``s_bar``, ``(..., genes)``.
        modality
            ``"u"`` or ``"s"``.
        size_factor
            Size factor broadcastable to ``mean`` (default 1: the scale of counts divided by the size factor).

        Returns
        -------
        torch.Tensor
            Shaped as ``mean``.
        """
        sf = torch.ones((), dtype=mean.dtype, device=mean.device) if size_factor is None else size_factor
        state = torch.zeros((), dtype=torch.long, device=mean.device)
        return self.dist(mean, state, modality, sf).mean.expand(mean.shape)


class Normal(Likelihood):
    """veloVI's Normal on smoothed, min-max scaled abundance (eq. 20-21).

    ``x ~ Normal(mean_k, (c_k sigma_g)^2)`` with ``c = (1, 1, 1, 0.1)``: the repression steady state is
    ten times tighter. One ``sigma`` per gene and modality, a point estimate initialised at the gene's
    standard deviation.

    Parameters
    ----------
    state_scale
        The four ``c_k``.
    """

    name = "normal"
    gene_param_names = ("sigma_u", "sigma_s")

    def __init__(self, state_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.1)) -> None:
        super().__init__()
        self.register_buffer("state_scale", torch.tensor(state_scale, dtype=torch.float32))

    def setup(self, u: np.ndarray, s: np.ndarray, size_factor_u: np.ndarray, size_factor_s: np.ndarray) -> None:
        """Create ``sigma_u`` and ``sigma_s`` per gene (see :meth:`Likelihood.setup`)."""
        self.raw_sigma_u = _positive_param(np.maximum(_column_std(u), 1e-3))
        self.raw_sigma_s = _positive_param(np.maximum(_column_std(s), 1e-3))

    def sigma(self, modality: str) -> torch.Tensor:
        """Per-gene noise scale of ``modality`` (``"u"`` or ``"s"``).

        Parameters
        ----------
        modality
            ``"u"`` or ``"s"``.

        Returns
        -------
        torch.Tensor
            Shape ``(genes,)``.
        """
        return _positive(self.raw_sigma_u if modality == "u" else self.raw_sigma_s)

    def dist(self, mean, state, modality, size_factor=None):  # noqa: D102 - documented in base class
        scale = self.state_scale[state] * self.sigma(modality)
        return vdist.Normal(mean, scale)

    def gene_params(self) -> dict[str, torch.Tensor]:
        """``sigma_u`` and ``sigma_s`` (see :meth:`Likelihood.gene_params`)."""
        return {"sigma_u": self.sigma("u"), "sigma_s": self.sigma("s")}


class _CountLikelihood(Likelihood):
    """Shared parts of count likelihoods on raw UMI counts.

    The expected count is ``size_factor_n * (scale_g * mean_k + background_g)``: ``scale_g`` maps the
    kinetics' scale to counts and ``background_g`` is a small ambient rate, so the repression steady
    state (mean 0) still explains a stray count. The kinetic scale is normalised counts divided by the
    gene's 99th percentile, so the kinetics see data of order one, as with the Normal likelihood.
    """

    is_count = True
    gene_param_names = ("scale_u", "scale_s", "background_u", "background_s")

    def setup(self, u: np.ndarray, s: np.ndarray, size_factor_u: np.ndarray, size_factor_s: np.ndarray) -> None:
        """Create ``scale`` and ``background`` per gene and modality (see :meth:`Likelihood.setup`)."""
        for m, x, sf in (("u", u, size_factor_u), ("s", s, size_factor_s)):
            norm = x / sf[:, None]
            top = _robust_max(norm)
            setattr(self, f"raw_scale_{m}", _positive_param(top))
            setattr(self, f"raw_background_{m}", _positive_param(np.maximum(0.01 * norm.mean(0), 1e-4)))

    def kinetic_scale_stats(self, x: np.ndarray, size_factor: np.ndarray) -> np.ndarray:
        """Each gene's 99th percentile of normalised counts (see :meth:`Likelihood.kinetic_scale_stats`)."""
        return _robust_max(x / size_factor[:, None])

    def to_kinetic_scale(self, x: np.ndarray, size_factor: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """Normalised counts divided by each gene's 99th percentile (see :meth:`Likelihood.to_kinetic_scale`)."""
        norm = x / size_factor[:, None]
        return norm / (_robust_max(norm) if stats is None else stats)

    def encoder_input(self, x: torch.Tensor, size_factor: torch.Tensor | None) -> torch.Tensor:
        """``log1p`` of size-factor-normalised counts (see :meth:`Likelihood.encoder_input`)."""
        return torch.log1p(x / size_factor)

    def rate(self, mean: torch.Tensor, modality: str, size_factor: torch.Tensor) -> torch.Tensor:
        """Expected count ``size_factor * (scale_g * mean + background_g)``.

        Parameters
        ----------
        mean
            Kinetic mean of a state.
        modality
            ``"u"`` or ``"s"``.
        size_factor
            ``(cells, 1)`` size factors.

        Returns
        -------
        torch.Tensor
            The Poisson rate / negative binomial mean.
        """
        scale = _positive(getattr(self, f"raw_scale_{modality}"))
        background = _positive(getattr(self, f"raw_background_{modality}"))
        return size_factor * (scale * mean + background)

    def gene_params(self) -> dict[str, torch.Tensor]:
        """``scale_u``, ``scale_s``, ``background_u``, ``background_s``."""
        out = {}
        for m in MODALITIES:
            out[f"scale_{m}"] = _positive(getattr(self, f"raw_scale_{m}"))
            out[f"background_{m}"] = _positive(getattr(self, f"raw_background_{m}"))
        return out


def _column_std(x: np.ndarray) -> np.ndarray:
    """Per-gene standard deviation, computed in chunks of genes so no full-size temporary is made."""
    n_cells, n_genes = x.shape
    out = np.empty(n_genes, dtype=np.float32)
    for sl in gene_slices(n_cells, n_genes):
        out[sl] = np.asarray(x[:, sl], dtype=np.float64).std(0)
    return out


def _robust_max(x: np.ndarray) -> np.ndarray:
    """Per-gene 99th percentile of positive values, never zero."""
    q = np.percentile(x, 99, axis=0)
    fallback = x.max(0)
    q = np.where(q > 0, q, fallback)
    return np.maximum(q, 1e-3).astype(np.float32)


class Poisson(_CountLikelihood):
    """Poisson on raw counts: ``x ~ Poisson(size_factor (scale_g mean_k + background_g))``."""

    name = "poisson"

    def dist(self, mean, state, modality, size_factor=None):  # noqa: D102 - documented in base class
        return vdist.Poisson(self.rate(mean, modality, size_factor))


class NegativeBinomial(_CountLikelihood):
    """Negative binomial on raw counts, mean as in :class:`Poisson`, per-gene inverse dispersion ``theta``.

    ``Var = mu + mu^2 / theta``; parameterised with ``total_count = theta`` and
    ``logits = log(mu) - log(theta)``.
    """

    name = "negative_binomial"
    gene_param_names = _CountLikelihood.gene_param_names + ("theta_u", "theta_s")

    def setup(self, u: np.ndarray, s: np.ndarray, size_factor_u: np.ndarray, size_factor_s: np.ndarray) -> None:
        """Create scale, background and ``theta`` (init 10) per gene and modality."""
        super().setup(u, s, size_factor_u, size_factor_s)
        n_genes = u.shape[1]
        self.raw_theta_u = _positive_param(np.full(n_genes, 10.0))
        self.raw_theta_s = _positive_param(np.full(n_genes, 10.0))

    def dist(self, mean, state, modality, size_factor=None):  # noqa: D102 - documented in base class
        mu = self.rate(mean, modality, size_factor)
        theta = _positive(getattr(self, f"raw_theta_{modality}"))
        return vdist.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta))

    def gene_params(self) -> dict[str, torch.Tensor]:
        """Scale, background and ``theta`` per modality."""
        out = super().gene_params()
        out["theta_u"] = _positive(self.raw_theta_u)
        out["theta_s"] = _positive(self.raw_theta_s)
        return out


LIKELIHOODS: dict[str, type[Likelihood]] = {}


def register_likelihood(cls: type[Likelihood]) -> type[Likelihood]:
    """Register a likelihood class under its ``name`` so it can be selected by name.

    Parameters
    ----------
    cls
        A :class:`Likelihood` subclass.

    Returns
    -------
    type
        ``cls`` unchanged (usable as a decorator).
    """
    LIKELIHOODS[cls.name] = cls
    return cls


for _cls in (Normal, Poisson, NegativeBinomial):
    register_likelihood(_cls)


def get_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """Return a likelihood instance from a name or pass an instance through.

    Parameters
    ----------
    likelihood
        ``"normal"``, ``"poisson"``, ``"negative_binomial"`` (or another registered name), or an instance.

    Returns
    -------
    Likelihood
        A fresh instance for a name, ``likelihood`` itself for an instance.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, type) and issubclass(likelihood, Likelihood):
        return likelihood()
    key = str(likelihood).lower().replace("-", "_")
    aliases = {"nb": "negative_binomial", "gaussian": "normal"}
    key = aliases.get(key, key)
    if key not in LIKELIHOODS:
        raise ValueError(
            f"Unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)} or pass a "
            "velopyro.likelihoods.Likelihood instance."
        )
    return LIKELIHOODS[key]()
