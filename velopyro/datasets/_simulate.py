"""Simulate data from velopyro's own generative process, with the ground truth kept.

Each cell draws ``z_n ~ Normal(0, I_d)`` (eq. 13); its position on a shared clock is
``t_n = t_max Phi(w . z_n)`` (a function of z, as the time heads are, eq. 16-19). For each gene the
state follows the clock: induction before the switch time, repression after, and a fraction of cells
sits in the steady state of its phase (eq. 5-6, 11-12). Rates and means come from a kinetics object of
:mod:`velopyro.kinetics` (eq. 1-12 for the default constant kinetics; its ``sample_rates`` draws the
truth) and observations from a :mod:`velopyro.likelihoods` object (eq. 20-21 for the Normal; the count
likelihoods with per-cell size factors), so the simulator and the model share the same maths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import norm

from .._rng import seeded
from ..kinetics import Kinetics, get_kinetics
from ..likelihoods import Likelihood, get_likelihood

if TYPE_CHECKING:
    import anndata

__all__ = ["simulate"]


def simulate(
    n_cells: int = 1000,
    n_genes: int = 100,
    seed: int = 0,
    *,
    likelihood: str | Likelihood = "normal",
    n_latent: int = 10,
    t_max: float = 20.0,
    noise: float = 0.05,
    steady_state_fraction: float = 0.1,
    counts_per_unit: float = 30.0,
    dispersion: float = 5.0,
    kinetics: str | type[Kinetics] = "constant",
) -> anndata.AnnData:
    """Draw an AnnData from velopyro's generative process, with the truth in documented keys.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    seed
        Seed of every draw.
    likelihood
        ``"normal"`` (observations in ``layers["Ms"]``/``["Mu"]``, the model's default input, clipped at
        0 because abundances are non-negative) or a count
        likelihood (``"poisson"``, ``"negative_binomial"``: integer counts in ``layers["spliced"]`` /
        ``["unspliced"]``), or an instance whose parameters are set by the caller.
    n_latent
        d, the dimension of z.
    t_max
        The time scale (20).
    noise
        Normal likelihood: the per-gene noise scale ``sigma_g`` (times ``c_k``).
    steady_state_fraction
        Fraction of cells per gene placed in the steady state of their phase.
    counts_per_unit
        Count likelihoods: the mean count at kinetic mean 1 for a cell of size factor 1 (``scale_g``
        is drawn around it).
    dispersion
        Negative binomial inverse dispersion ``theta``.
    kinetics
        A registered kinetics name or class (:mod:`velopyro.kinetics`): ``"constant"`` (veloVI's, eq. 1-12)
        or ``"time_dependent"`` (transcription relaxing from ``alpha`` to ``alpha_1``); its
        :meth:`~velopyro.kinetics.Kinetics.sample_rates` draws the true rates.

    Returns
    -------
    anndata.AnnData
        Observations, and the truth:

        - ``obs["true_t"]``: the cell's clock time in ``[0, t_max]``; ``obsm["true_z"]``: z
        - ``layers["true_t"]``: time per cell and gene (the clock); ``layers["true_state"]``: state 0..3
          (induction, induction steady state, repression, repression steady state)
        - ``layers["true_velocity"]`` (ds/dt) and ``layers["true_velocity_u"]`` (du/dt);
          ``layers["true_u"]``/``["true_s"]``: the noiseless means
        - ``var["true_<rate>"]`` for each of the kinetics' rates (``true_alpha``, ``true_beta``,
          ``true_gamma`` for the constant kinetics), ``["true_t_"]`` (switch time) and
          the likelihood's parameters as ``var["true_<name>"]`` (e.g. ``true_sigma_u``)
        - ``obs["true_size_factor"]`` for count likelihoods
        - ``uns["simulation"]``: the arguments.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    torch_gen = torch.Generator().manual_seed(seed)
    lik = get_likelihood(likelihood)
    kin = get_kinetics(kinetics)(n_genes, t_max=t_max)

    # cells: z (eq. 13) and a clock that is a function of z
    z = rng.standard_normal((n_cells, n_latent))
    w = rng.standard_normal(n_latent)
    w /= np.linalg.norm(w)
    clock = t_max * norm.cdf(z @ w)

    # genes: rates on the kinetic scale of order one, switch inside the time range (the kinetics' draws)
    truth = kin.sample_rates(rng, n_genes, t_max)
    t_s = truth["t_s"]

    t = np.repeat(clock[:, None], n_genes, axis=1)
    induction = t < t_s[None, :]
    steady = rng.random((n_cells, n_genes)) < steady_state_fraction
    state = np.where(induction, 0, 2) + steady.astype(int)

    tt = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    r = {k: tt(v) for k, v in truth.items()}
    # times per state (eq. 17, 19): the clock within each phase
    t_ind = tt(np.minimum(t, t_s[None, :]))
    t_rep = tt(np.maximum(t, t_s[None, :]))
    u_bar, s_bar = kin.state_means(t_ind, t_rep, r)  # eq. 1-12
    du, ds = kin.state_velocities(u_bar, s_bar, t_ind, r)
    k = torch.as_tensor(state).unsqueeze(-1)
    pick = lambda x: torch.gather(x, -1, k).squeeze(-1)  # noqa: E731
    u_mean, s_mean, v_u, v_s = pick(u_bar), pick(s_bar), pick(du), pick(ds)

    # observations through the likelihood object (eq. 20-21)
    sf = np.ones(n_cells)
    if lik.is_count:
        sf = np.exp(rng.normal(0.0, 0.3, n_cells))
        sf /= np.median(sf)
    ones_u = np.ones((n_cells, n_genes), dtype=np.float32)
    lik.setup(ones_u, ones_u, sf.astype(np.float32), sf.astype(np.float32))
    truth_params = _set_true_likelihood_params(lik, rng, n_genes, noise, counts_per_unit, dispersion)
    sf_t = torch.as_tensor(sf, dtype=torch.float32)[:, None]
    k32 = torch.as_tensor(state)
    # the likelihood samples from torch's global generator: seed it for this block only
    with torch.no_grad(), seeded(int(torch.randint(0, 2**31 - 1, (1,), generator=torch_gen))):
        u_obs = lik.dist(u_mean.float(), k32, "u", sf_t).sample().numpy()
        s_obs = lik.dist(s_mean.float(), k32, "s", sf_t).sample().numpy()

    adata = ad.AnnData(np.asarray(s_obs, dtype=np.float32))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    if lik.is_count:
        adata.layers["spliced"] = s_obs.astype(np.float32)
        adata.layers["unspliced"] = u_obs.astype(np.float32)
        adata.obs["true_size_factor"] = sf.astype(np.float32)
    else:  # abundances are non-negative: Normal draws are clipped at 0
        adata.layers["Ms"] = np.clip(s_obs, 0.0, None).astype(np.float32)
        adata.layers["Mu"] = np.clip(u_obs, 0.0, None).astype(np.float32)
        adata.X = adata.layers["Ms"].copy()
    adata.obs["true_t"] = clock.astype(np.float32)
    adata.obsm["true_z"] = z.astype(np.float32)
    adata.layers["true_t"] = t.astype(np.float32)
    adata.layers["true_state"] = state.astype(np.int8)
    adata.layers["true_u"] = u_mean.numpy().astype(np.float32)
    adata.layers["true_s"] = s_mean.numpy().astype(np.float32)
    adata.layers["true_velocity"] = v_s.numpy().astype(np.float32)
    adata.layers["true_velocity_u"] = v_u.numpy().astype(np.float32)
    for name, val in truth.items():
        adata.var["true_t_" if name == "t_s" else f"true_{name}"] = np.asarray(val, dtype=np.float32)
    for name, val in truth_params.items():
        adata.var[f"true_{name}"] = val.astype(np.float32)
    adata.uns["simulation"] = dict(n_cells=n_cells, n_genes=n_genes, seed=seed, likelihood=lik.name,
                                   n_latent=n_latent, t_max=t_max, noise=noise,
                                   steady_state_fraction=steady_state_fraction,
                                   counts_per_unit=counts_per_unit, dispersion=dispersion, kinetics=kin.name)
    return adata


def _set_true_likelihood_params(lik: Likelihood, rng: np.random.Generator, n_genes: int, noise: float,
                                counts_per_unit: float, dispersion: float) -> dict[str, np.ndarray]:
    """Overwrite the likelihood's parameters with the simulation's truth; return them by name."""
    from torch.distributions import constraints, transform_to

    inv = transform_to(constraints.positive).inv
    values: dict[str, np.ndarray] = {}
    for name, p in lik.named_parameters():
        key = name.removeprefix("raw_")
        if key.startswith("sigma"):
            val = np.full(n_genes, noise)
        elif key.startswith("scale"):
            val = counts_per_unit * np.exp(rng.uniform(-0.5, 0.5, n_genes))
        elif key.startswith("background"):
            val = np.full(n_genes, 0.02)
        elif key.startswith("theta"):
            val = np.full(n_genes, dispersion)
        else:  # a user's likelihood: keep its initial value
            val = transform_to(constraints.positive)(p.detach()).numpy()
        with torch.no_grad():
            p.copy_(inv(torch.as_tensor(val, dtype=p.dtype)))
        values[key] = val
    return values
