"""The veloVI generative process as a Pyro model (eq. 13-21) with the switch penalty (eq. 27).

Plates: ``cells`` at dim -2 (subsampled; sites inside are scaled by N/B) and ``genes`` at dim -1.
Shapes inside a minibatch of B cells and G genes (E: the enumeration dimension of k, size 4, at dim -3)::

    z            (B, 1, d)     eq. 13   Normal(0, I_d)
    rho_ind/rep  (B, G)        eq. 16, 18
    t_ind/t_rep  (B, G)        eq. 17, 19
    u_bar/s_bar  (B, G, 4)     eq. 1-12 (all four states, from velopyro.kinetics)
    pi           (B, G, 4)     eq. 14   Dirichlet(0.25, 0.25, 0.25, 0.25)   (absent when collapsed)
    k            (E, 1, 1)     eq. 15   Categorical(pi), enumerated in parallel, never sampled
    u, s         (E, B, G)     eq. 20-21 through the likelihood component

State coupling:

- ``"shared"``: one k per cell and gene for both u and s, the generative process itself; its exact
  marginal is ``log sum_k pi_k p(u | k) p(s | k)``.
- ``"independent"``: separate states ``k_u``, ``k_s`` for u and for s; the marginal is
  ``log sum_k pi_k p(u | k) + log sum_k pi_k p(s | k)``, the mixtures of eq. 23-24 that the reference
  optimises.

With ``collapse_pi=True`` (``pi_guide="collapsed"``) pi is integrated out exactly (see
:mod:`velopyro.collapsed`): ``k ~ Categorical(0.25 each)`` (shared), or ``k_u ~ Categorical(0.25 each)`` and
``k_s | k_u ~ Categorical((0.25 + e_{k_u}) / 2)`` (independent; the Dirichlet-multinomial pair of the same pi).
There is no pi site.

With ``pi_of_z=True`` (``pi_guide="conditional"``) eq. 14's Dirichlet is replaced by a function of the
latent: ``pi_n = f(z_n)`` (a :class:`velopyro.nn.StateHead`, point-estimated like the time heads of eq.
16-19), and ``k ~ Categorical(f(z))`` (eq. 15; ``k_u``, ``k_s`` each from it under eq. 23-24) is enumerated
exactly. There is no pi site and no pi KL; the guide is q(z | u, s) alone. It is the limit of veloVI's
amortised q(pi | z) = Dirichlet(c f(z)) as c grows, with the Dirichlet prior's KL dropped (a point pi
has no density under it): the state probabilities stay a smooth function of z, as with q(pi | z), at the
cost of a collapsed fit (no Dirichlet sample, no digamma in the backward pass).

Switch penalty (eq. 25, 27): veloVI's objective is ``L_velo = L_elbo + lambda L_switch`` with lambda = 0.2,
and the veloVI reference applies it to the per-cell mean of the ELBO. velopyro keeps that meaning: the
factor is ``-N lambda L_switch`` outside the cells plate (so it is not rescaled by N/B), i.e. the loss
per cell is ``-ELBO / N + lambda L_switch`` whatever the minibatch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from torch import nn

from . import distributions as vdist
from . import kinetics as kinetics_
from ._chunks import gene_slices
from .coupling import get_state_coupling
from .covariates import BatchEffect, check_batch_index
from .likelihoods import Likelihood
from .nn import StateHead, TimeHeads

__all__ = ["VeloVIModel", "switch_targets", "select_state"]

BETA_INIT = kinetics_.BETA_INIT  # the reference's initial splicing rate (softplus(0.5))


def __getattr__(name: str) -> Any:
    """The names that moved: ``STATE_COUPLINGS`` (the registry's names, now read from
    :data:`velopyro.coupling.STATE_COUPLINGS`) and ``RATE_MAX`` (:data:`velopyro.kinetics.RATE_MAX`)."""
    import warnings

    if name == "STATE_COUPLINGS":
        from .coupling import STATE_COUPLINGS

        warnings.warn("velopyro.model.STATE_COUPLINGS is deprecated; use velopyro.coupling.STATE_COUPLINGS "
                      "(the registry of state couplings, by name).", DeprecationWarning, stacklevel=2)
        return tuple(STATE_COUPLINGS)
    if name == "RATE_MAX":
        warnings.warn("velopyro.model.RATE_MAX is deprecated; use velopyro.kinetics.RATE_MAX.",
                      DeprecationWarning, stacklevel=2)
        return kinetics_.RATE_MAX
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def select_state(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``x[..., k]`` with Pyro's broadcasting rules (``Vindex(x)[..., k]``) for per-state values ``x``.

    Under parallel enumeration ``k`` is ``arange(4)`` shaped ``(4, 1, ..., 1)``; then the selection is a
    permutation of ``x``'s axes (a view whose gradient is free), not a gather and a scatter-add.

    Parameters
    ----------
    x
        Per-state values ``(cells, G, 4)``.
    k
        State indices broadcasting against ``(cells, G)``: enumerated or sampled.

    Returns
    -------
    torch.Tensor
        Shape ``broadcast(k.shape, x.shape[:-1])``.
    """
    n = x.shape[-1]
    if (k.dim() >= x.dim() and k.shape[0] == n and k.numel() == n
            and torch.equal(k.reshape(-1), torch.arange(n, device=k.device))):
        return x.movedim(-1, 0).reshape(k.shape[:k.dim() - x.dim() + 1] + x.shape[:-1])
    return Vindex(x)[..., k]


def switch_targets(u: np.ndarray, s: np.ndarray, quantile: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """u* and s* of the switch penalty and of alpha's initialisation (eq. 27, "Initialization").

    Per gene, the cells at or above the 99th percentile of unspliced; u* is the median of their
    unspliced and s* the median of the same cells' spliced.

    Parameters
    ----------
    u, s
        Cells x genes on the kinetic scale.
    quantile
        Percentile of unspliced that selects the cells.

    Returns
    -------
    tuple of numpy.ndarray
        ``(u_star, s_star)``, each ``(genes,)``.
    """
    n_cells, n_genes = u.shape
    u_star = np.empty(n_genes, dtype=np.float32)
    s_star = np.empty(n_genes, dtype=np.float32)
    for sl in gene_slices(n_cells, n_genes):
        uc, sc = np.asarray(u[:, sl]), np.asarray(s[:, sl])
        thr = np.percentile(uc, quantile, axis=0)
        mask = uc >= thr[None, :]
        u_star[sl] = np.nanmedian(np.where(mask, uc, np.nan), axis=0)
        s_star[sl] = np.nanmedian(np.where(mask, sc, np.nan), axis=0)
    return u_star, s_star


def steady_state_ratio(u: np.ndarray, s: np.ndarray, quantile: float = 95.0) -> np.ndarray:
    """Per-gene steady-state ratio gamma / beta from the extreme cells of each phase portrait.

    A steady-state estimate in the manner of scVelo's ("deterministic", Bergen et al., Nat Biotechnol 2020): at
    steady state du/dt = 0 and ds/dt = beta u - gamma s = 0, so u = (gamma / beta) s. Per gene, the cells whose
    ``s / max(s) + u / max(u)`` lies in the top or bottom ``100 - quantile`` percent are taken as near the
    two steady states and the slope is fitted through the origin, ``sum(u s) / sum(s s)``. velopyro uses it
    to start gamma at a data-derived ratio (``rate_init="steady_state"``) instead of one constant for all
    genes, which leaves a gene whose ratio the trajectory does not pin down at the constant's ratio.

    It is not scVelo's exact fit, which :func:`velopyro.pp.select_genes` reproduces (``pp._steady_state_fit``):
    scVelo without an offset keeps only the upper tail of cells, and gives 0 where the slope is undefined. A
    start needs a positive ratio for every gene, so this one takes both tails and gives 1 there (on
    ``velopyro.datasets.simulate(500, 30, seed=1)`` the two differ by at most 0.4%, 6.8e-3). Kept apart: ``pp`` cannot
    import this module (import layers), and merging either way would change the starts or the gene selection.

    Parameters
    ----------
    u, s
        Cells x genes on the kinetic scale.
    quantile
        Upper percentile of the extreme cells (the lower one is ``100 - quantile``).

    Returns
    -------
    numpy.ndarray
        ``(genes,)`` float32, positive (NaN-free: genes without signal get 1).
    """
    n_cells, n_genes = u.shape
    out = np.ones(n_genes, dtype=np.float32)
    for sl in gene_slices(n_cells, n_genes):
        uc, sc = np.asarray(u[:, sl], dtype=np.float64), np.asarray(s[:, sl], dtype=np.float64)
        norm = sc / np.maximum(sc.max(0), 1e-12) + uc / np.maximum(uc.max(0), 1e-12)
        hi, lo = np.percentile(norm, quantile, axis=0), np.percentile(norm, 100.0 - quantile, axis=0)
        w = ((norm >= hi) | (norm <= lo)).astype(np.float64)
        ss, us = (w * sc * sc).sum(0), (w * uc * sc).sum(0)
        ratio = np.divide(us, ss, out=np.ones_like(ss), where=ss > 0)
        out[sl] = np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)
    return out


class VeloVIModel(nn.Module):
    """Generative model p(u, s, z, pi, k) with point-estimated kinetic parameters.

    The rates and the closed forms (eq. 1-12) are the :attr:`kinetics` object's
    (:class:`velopyro.kinetics.Kinetics`, chosen by name).

    Parameters
    ----------
    n_genes
        G.
    likelihood
        Observation model (its :meth:`~velopyro.likelihoods.Likelihood.setup` has been called).
    u_star, s_star
        Targets of the switch penalty, ``(G,)``; ``u_star`` also initialises alpha.
    n_latent
        d.
    n_hidden, n_layers
        Shape of the time heads' trunk.
    t_max
        Time scale (20).
    switch_penalty
        lambda of eq. 25.
    state_coupling
        ``"shared"`` or ``"independent"`` (see the module docstring).
    beta_init, gamma_init, t_s_init
        Initial values of the splicing and degradation rates and the switch time (``gamma_init`` may be
        per gene, ``(G,)``).
    seed
        Seed of the small jitter on the switch time's initial value.
    collapse_pi
        Integrate pi out (no pi site; see the module docstring and :mod:`velopyro.collapsed`).
    n_categories
        Categories of each batch covariate (:mod:`velopyro.covariates`); empty without covariates.
    batch_effect
        The covariate's effect on the observation model: ``"scale_offset"``, ``"scale"`` or ``"none"``
        (:class:`velopyro.covariates.BatchEffect`).
    kinetics
        A registered kinetics name (``"constant"``, veloVI's, or ``"time_dependent"``) or class
        (:mod:`velopyro.kinetics`).
    pi_of_z
        pi is a function of z (:attr:`state_prior`, see the module docstring) instead of eq. 14's Dirichlet;
        requires ``collapse_pi=True`` (no pi site).
    """

    def __init__(
        self,
        n_genes: int,
        likelihood: Likelihood,
        u_star: np.ndarray,
        s_star: np.ndarray,
        n_latent: int = 10,
        n_hidden: int = 256,
        n_layers: int = 1,
        t_max: float = 20.0,
        switch_penalty: float = 0.2,
        state_coupling: str = "independent",
        beta_init: float = BETA_INIT,
        gamma_init: float | np.ndarray = 0.31,
        t_s_init: float = 7.0,
        seed: int = 0,
        collapse_pi: bool = False,
        n_categories: tuple[int, ...] = (),
        batch_effect: str = "scale_offset",
        kinetics: str | type[kinetics_.Kinetics] = "constant",
        pi_of_z: bool = False,
    ) -> None:
        super().__init__()
        if pi_of_z and not collapse_pi:
            raise ValueError("pi_of_z=True needs collapse_pi=True: the model then has no pi site.")
        self.coupling = get_state_coupling(state_coupling)
        state_coupling = self.coupling.name
        self.n_genes, self.n_latent, self.t_max = n_genes, n_latent, float(t_max)
        self.switch_penalty, self.state_coupling = float(switch_penalty), state_coupling
        # the rates (point estimates) and the closed forms, eq. 1-12; the first submodule, so the parameters keep
        # the order they had as the model's own (the order of the gradient-norm sum in clipping)
        self.kinetics = kinetics_.get_kinetics(kinetics)(n_genes, u_star, t_max=self.t_max, beta_init=beta_init,
                                                        gamma_init=gamma_init, t_s_init=t_s_init, seed=seed)
        self.likelihood = likelihood
        self.time_heads = TimeHeads(n_latent, n_genes, n_hidden, n_layers)
        self.register_buffer("u_star", torch.as_tensor(u_star, dtype=torch.float32))
        self.register_buffer("s_star", torch.as_tensor(s_star, dtype=torch.float32))
        self.register_buffer("pi_prior", torch.full((kinetics_.N_STATES,), 0.25))  # eq. 14
        self.collapse_pi = bool(collapse_pi)
        # the covariate's technical effect on the observed mean (eq. 20-21 see a_b mean + c_b)
        self.batch_effect = BatchEffect(n_categories, n_genes, batch_effect) if n_categories else None
        # pi = f(z) in place of eq. 14's Dirichlet (pi_guide="conditional"); made last, so that the other
        # parameters' initial values are those of the other families
        self.state_prior = StateHead(n_latent, n_genes, n_hidden, n_layers) if pi_of_z else None
        self._pyro_name: str | None = None  # set by the JIT training path to register parameters
        self._readouts = False  # see readouts()

    # ---- point-estimated globals ------------------------------------------------------------------
    def rates(self) -> dict[str, torch.Tensor]:
        """Constrained kinetic parameters (:meth:`velopyro.kinetics.Kinetics.rates`): the kinetics' rates in
        (0, 50) (``alpha``, ``beta``, ``gamma`` for the constant kinetics) and 0 < t_s < t_max.

        Returns
        -------
        dict of str to torch.Tensor
            Each ``(G,)``.
        """
        return self.kinetics.rates()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # models saved before kinetics objects kept the rates on the model itself: raw_alpha, ...
        for key in (*self.kinetics.rate_names, "t_s"):
            old = f"{prefix}raw_{key}"
            if old in state_dict:
                state_dict[f"{prefix}kinetics.raw_{key}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def switch_loss(self, r: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """L_switch of eq. 27: squared distance of the switch point (eq. 9-10) from (u*, s*).

        Parameters
        ----------
        r
            Rates from :meth:`rates` (computed if None).

        Returns
        -------
        torch.Tensor
            A scalar, summed over genes.
        """
        r = self.rates() if r is None else r
        u0, s0 = self.kinetics.switch_point(r)  # eq. 9-10
        return ((u0 - self.u_star) ** 2 + (s0 - self.s_star) ** 2).sum()

    # ---- deterministic part of the generative process -------------------------------------------
    def kinetic_state(self, z: torch.Tensor, r: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Times and per-state means for latent ``z`` (eq. 16-19 then eq. 1-12).

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.
        r
            Rates from :meth:`rates` (computed if None).

        Returns
        -------
        dict of str to torch.Tensor
            ``rho_ind``, ``rho_rep``, ``t_ind``, ``t_rep`` ``(cells, G)`` and ``u_bar``, ``s_bar``
            ``(cells, G, 4)``.
        """
        r = self.rates() if r is None else r
        rho_ind, rho_rep = self.time_heads(z)  # eq. 16, 18
        t_ind, t_rep = kinetics_.state_times(rho_ind, rho_rep, r["t_s"], self.t_max)  # eq. 17, 19
        u_bar, s_bar = self.kinetics.state_means(t_ind, t_rep, r)  # eq. 1-12
        return {"rho_ind": rho_ind, "rho_rep": rho_rep, "t_ind": t_ind, "t_rep": t_rep,
                "u_bar": u_bar, "s_bar": s_bar}

    def state_log_likelihood(
        self,
        u_bar: torch.Tensor,
        s_bar: torch.Tensor,
        u: torch.Tensor,
        s: torch.Tensor,
        size_factor_u: torch.Tensor | None = None,
        size_factor_s: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-state ``log p(u | k)`` and ``log p(s | k)`` through the likelihood component.

        Parameters
        ----------
        u_bar, s_bar
            Per-state means ``(cells, G, 4)``.
        u, s
            Observations ``(cells, G)``.
        size_factor_u, size_factor_s
            ``(cells, 1)`` size factors (count likelihoods).
        batch_index
            ``(cells, K)`` covariate codes (None or ``(cells, 0)``: none).

        Returns
        -------
        tuple of torch.Tensor
            Each ``(cells, G, 4)``.
        """
        # the state axis goes in front, as under enumeration (dim -3), so per-gene parameters broadcast
        k = torch.arange(kinetics_.N_STATES, device=u_bar.device).view(-1, 1, 1)
        lik = self.likelihood
        u_obs = self.observed_mean(u_bar.movedim(-1, 0), "u", batch_index)
        s_obs = self.observed_mean(s_bar.movedim(-1, 0), "s", batch_index)
        ll_u = lik.dist(u_obs, k, "u", size_factor_u).log_prob(u).movedim(0, -1)
        ll_s = lik.dist(s_obs, k, "s", size_factor_s).log_prob(s).movedim(0, -1)
        return ll_u, ll_s

    # ---- read-outs of a posterior draw ---------------------------------------------------------------
    @contextlib.contextmanager
    def readouts(self) -> Iterator[None]:
        """Within this context :meth:`forward` records what the posterior read-outs need as deterministic sites.

        The sites are the kinetic parameters (``"rates.<name>"``, from :meth:`rates`) and every value of
        :meth:`kinetic_state` under its own name (``"u_bar"``, ``"s_bar"``, ``"t_ind"``, ...), each as the
        model computes it. :func:`velopyro.posterior.iterate_samples` traces the model (replayed against a
        draw of the guide) inside this context; training never enters it, so its traces are unchanged.

        Yields
        ------
        None
        """
        previous, self._readouts = self._readouts, True
        try:
            yield
        finally:
            self._readouts = previous

    def _record(self, values: dict[str, torch.Tensor], plate_dims: int) -> None:
        """``pyro.deterministic`` sites for ``values`` inside :meth:`readouts` (leading ``plate_dims`` are batch)."""
        if self._readouts:
            for name, value in values.items():
                pyro.deterministic(name, value, event_dim=value.dim() - plate_dims)

    def observed_mean(self, mean: torch.Tensor, modality: str, batch_index: torch.Tensor | None) -> torch.Tensor:
        """The kinetic mean as the likelihood sees it: through the batch effect, if the model has covariates.

        Parameters
        ----------
        mean
            Kinetic mean of one modality, ``(..., cells, G)``.
        modality
            ``"u"`` or ``"s"``.
        batch_index
            ``(cells, K)`` covariate codes or None.

        Returns
        -------
        torch.Tensor
            ``mean`` unchanged without covariates, else ``a_b mean + c_b`` (:class:`velopyro.covariates.BatchEffect`).
        """
        if self.batch_effect is None:
            return mean
        return self.batch_effect(mean, modality, batch_index)

    # ---- the Pyro model ----------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        u: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        size_factor_u: torch.Tensor | None = None,
        size_factor_s: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
        kl_weight: float | torch.Tensor = 1.0,
        penalty_weight: float | torch.Tensor = 1.0,
        n_cells: int | None = None,
    ) -> None:
        """Run the generative process for the cells ``idx`` (observations may be absent).

        Parameters
        ----------
        idx
            Indices of the minibatch's cells, ``(B,)``: the subsample of the cells plate.
        u, s
            Observed unspliced and spliced ``(B, G)``, or None to sample them (posterior predictive).
        size_factor_u, size_factor_s
            ``(B, 1)`` size factors for count likelihoods.
        batch_index
            ``(B, K)`` integer covariate codes (:attr:`velopyro.data.VeloData.batch_index`), ``(B, 0)`` or
            None without covariates.
        n_cells
            N, the size of the cells plate (defaults to B, i.e. no rescaling).
        kl_weight
            Scale of the z site (KL warm-up via ``poutine.scale``).
        penalty_weight
            Multiplies lambda (the reference's penalty fade ``1 - w``).
        """
        if self._pyro_name is not None:
            pyro.module(self._pyro_name, self)
        n_batch = idx.shape[0]
        n_cells = n_batch if n_cells is None else n_cells
        check_batch_index(batch_index, n_batch, 0 if self.batch_effect is None else len(self.batch_effect.n_categories))
        r = self.rates()
        self._record({f"rates.{k}": v for k, v in r.items()}, plate_dims=0)
        if self.switch_penalty > 0:
            # eq. 25, 27: lambda per cell, times N cells; outside the plate, so not rescaled by N/B
            pyro.factor("switch_penalty", -n_cells * self.switch_penalty * penalty_weight * self.switch_loss(r))
        with pyro.plate("cells", n_cells, subsample=idx, dim=-2):
            with poutine.scale(scale=kl_weight):
                z_loc = self.pi_prior.new_zeros(n_batch, 1, self.n_latent)
                z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))  # eq. 13
            ks = self.kinetic_state(z.squeeze(-2), r)  # eq. 16-19, 1-12
            self._record(ks, plate_dims=2)
            u_bar, s_bar = ks["u_bar"], ks["s_bar"]
            with pyro.plate("genes", self.n_genes, dim=-1):
                enum = {"enumerate": "parallel"}
                lik = self.likelihood
                if self.state_prior is not None:  # pi = f(z) in place of eq. 14 (module docstring)
                    k_u, k_s = self.coupling.sample_states(self.state_prior(z.squeeze(-2)), enum)  # eq. 15, 23-24
                elif self.collapse_pi:  # pi integrated out (velopyro.collapsed)
                    k_u, k_s = self.coupling.sample_collapsed_states(self.pi_prior, enum)
                else:
                    pi = pyro.sample("pi", vdist.Dirichlet(self.pi_prior))  # eq. 14
                    k_u, k_s = self.coupling.sample_states(pi, enum)  # eq. 15, or eq. 23-24
                u_mean = self.observed_mean(select_state(u_bar, k_u), "u", batch_index)
                s_mean = self.observed_mean(select_state(s_bar, k_s), "s", batch_index)
                pyro.sample("u", lik.dist(u_mean, k_u, "u", size_factor_u), obs=u)  # eq. 20
                pyro.sample("s", lik.dist(s_mean, k_s, "s", size_factor_s), obs=s)  # eq. 21

