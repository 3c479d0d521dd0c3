"""Simulate data from velopyro's own generative process, with the ground truth kept.

Each cell draws ``z_n ~ Normal(0, I_d)`` (eq. 13); its position on a shared clock is
``t_n = t_max Phi(w . z_n)`` (a function of z, as the time heads are, eq. 16-19). For each gene the
state follows the clock: induction before the switch time, repression after, and a fraction of cells
sits in the steady state of its phase (eq. 5-6, 11-12). Rates and means come from a kinetics object of
:mod:`velopyro.kinetics` (eq. 1-12 for the default constant kinetics; its ``sample_rates`` draws the
truth) and observations from a :mod:`velopyro.likelihoods` object (eq. 20-21 for the Normal; the count
likelihoods with per-cell size factors), so the simulator and the model share the same maths.

With ``n_batches > 1`` each cell also belongs to a batch, drawn independently of z (every batch covers
the whole trajectory), and the batch changes how the kinetic mean is observed, as
:class:`velopyro.covariates.BatchEffect` models it: ``mean' = a_bg mean + c_bg`` per modality, with batch 0
the reference (``a = 1``, ``c = 0``), ``log a_bg ~ Normal(0, batch_scale)`` and, for the Normal likelihood,
``c_bg ~ batch_offset * Uniform(0, 1)`` (count likelihoods: ``c = 0``, ``a`` is a detection efficiency).
These draws come from their own generator, so ``n_batches=1`` gives exactly the data of earlier versions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import norm

from .._rng import seeded
from ..kinetics import Kinetics, get_kinetics
from ..likelihoods import Likelihood, get_likelihood

if TYPE_CHECKING:
    import anndata

__all__ = ["simulate", "simulate_to_disk"]


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
    n_batches: int = 1,
    batch_scale: float = 0.5,
    batch_offset: float = 0.2,
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
    n_batches
        Number of batches (1: none). Cells are assigned uniformly at random.
    batch_scale
        Standard deviation of the per-batch, gene-wise log scale ``log a_bg`` (batches after the first).
    batch_offset
        Normal likelihood: the largest per-batch, gene-wise offset ``c_bg`` (on the kinetic scale, where
        the induction steady state of u is near 1); ignored for count likelihoods.
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
        - with ``n_batches > 1``: ``obs["batch"]`` (categorical ``batch0``, ``batch1``, ...) and
          ``uns["true_batch_effects"]``: ``categories`` and ``scale_u``, ``scale_s``, ``offset_u``,
          ``offset_s``, each ``(n_batches, n_genes)`` (row 0 is the identity); ``layers["true_u"]`` and
          ``["true_s"]`` stay the batch-free kinetic means
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
    batch, effects = _batch_effects(seed, n_cells, n_genes, n_batches, batch_scale,
                                    0.0 if lik.is_count else batch_offset)
    u_seen, s_seen = u_mean, s_mean
    if n_batches > 1:
        u_seen = u_mean * torch.as_tensor(effects["scale_u"][batch]) + torch.as_tensor(effects["offset_u"][batch])
        s_seen = s_mean * torch.as_tensor(effects["scale_s"][batch]) + torch.as_tensor(effects["offset_s"][batch])
    # the likelihood samples from torch's global generator: seed it for this block only
    with torch.no_grad(), seeded(int(torch.randint(0, 2**31 - 1, (1,), generator=torch_gen))):
        u_obs = lik.dist(u_seen.float(), k32, "u", sf_t).sample().numpy()
        s_obs = lik.dist(s_seen.float(), k32, "s", sf_t).sample().numpy()

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
    if n_batches > 1:
        import pandas as pd

        names = [f"batch{b}" for b in range(n_batches)]
        adata.obs["batch"] = pd.Categorical.from_codes(batch, categories=names)
        adata.uns["true_batch_effects"] = {"categories": np.asarray(names), **{
            k: v.astype(np.float32) for k, v in effects.items()}}
        adata.uns["simulation"].update(n_batches=n_batches, batch_scale=batch_scale, batch_offset=batch_offset)
    return adata


def _batch_effects(seed: int, n_cells: int, n_genes: int, n_batches: int, scale: float,
                   offset: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Batch labels and per-batch, gene-wise scale and offset (row 0 the identity), from their own generator."""
    if int(n_batches) != n_batches or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}.")
    n_batches = int(n_batches)
    rng = np.random.default_rng([seed, 7919])  # apart from the main stream: n_batches=1 changes nothing
    batch = rng.integers(0, n_batches, n_cells)
    out = {}
    for m in ("u", "s"):
        log_a = rng.normal(0.0, scale, (n_batches, n_genes))
        c = offset * rng.uniform(0.0, 1.0, (n_batches, n_genes))
        log_a[0], c[0] = 0.0, 0.0
        out[f"scale_{m}"], out[f"offset_{m}"] = np.exp(log_a), c
    return batch, out


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


def simulate_to_disk(
    path: str | os.PathLike,
    n_cells: int = 1_000_000,
    n_genes: int = 500,
    seed: int = 0,
    *,
    likelihood: str = "normal",
    n_latent: int = 10,
    t_max: float = 20.0,
    noise: float = 0.05,
    steady_state_fraction: float = 0.1,
    counts_per_unit: float = 30.0,
    dispersion: float = 5.0,
    chunk_cells: int | None = None,
    truth_layers: bool = False,
) -> str:
    """Write a simulation of :func:`simulate`'s generative process to an ``.h5ad`` file or zarr store in chunks.

    The same process as :func:`simulate`, drawn chunk by chunk of cells, so the memory does not grow with
    ``n_cells`` (1M cells x 500 genes: 4 GB on disk for the two layers). The draws differ from
    :func:`simulate` with the same seed (the random streams are split per chunk: the gene parameters come
    from ``seed``, the cells of chunk ``c`` from ``(seed, c)``); the same arguments give the same file.

    Parameters
    ----------
    path
        Target; a name ending in ``.zarr`` writes a zarr store, anything else an ``.h5ad`` file. Must not exist.
    n_cells, n_genes, seed, likelihood, n_latent, t_max, noise, steady_state_fraction, counts_per_unit, dispersion
        As :func:`simulate` (``likelihood`` by name).
    chunk_cells
        Cells per chunk (default: about 2^20 cells x genes entries).
    truth_layers
        Also write ``layers["true_velocity"]``, ``["true_state"]`` and ``["true_t"]`` (three more
        cells x genes arrays on disk).

    Returns
    -------
    str
        ``path``. The store holds ``layers["Ms"]``/``["Mu"]`` (Normal) or ``["spliced"]``/``["unspliced"]``
        (counts, float32 integers), ``obs["true_t"]`` (and ``obs["true_size_factor"]`` for counts),
        ``obsm["true_z"]``, the true gene parameters in ``var`` and the arguments in ``uns["simulation"]``;
        no ``X``.
    """
    import anndata as ad
    import pandas as pd

    path = str(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path!r} exists; pass a new path (or delete it first).")
    lik = get_likelihood(likelihood)
    chunk = int(chunk_cells) if chunk_cells else max(1, 2**20 // max(n_genes, 1))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n_latent)
    w /= np.linalg.norm(w)
    beta = np.exp(rng.uniform(np.log(0.1), np.log(0.8), n_genes))
    gamma = beta * np.exp(rng.uniform(np.log(0.4), np.log(2.5), n_genes))
    alpha = beta * rng.uniform(0.8, 1.2, n_genes)
    t_s = rng.uniform(0.3, 0.7, n_genes) * t_max
    ones = np.ones((1, n_genes), dtype=np.float32)
    lik.setup(ones, ones, np.ones(1, np.float32), np.ones(1, np.float32))
    truth_params = _set_true_likelihood_params(lik, rng, n_genes, noise, counts_per_unit, dispersion)
    tt = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    kin = get_kinetics("constant")(n_genes, t_max=t_max)  # veloVI's kinetics (eq. 1-12)
    r = {"alpha": tt(alpha), "beta": tt(beta), "gamma": tt(gamma), "t_s": tt(t_s)}

    var = pd.DataFrame({"true_alpha": alpha.astype(np.float32), "true_beta": beta.astype(np.float32),
                        "true_gamma": gamma.astype(np.float32), "true_t_": t_s.astype(np.float32),
                        **{f"true_{k}": v.astype(np.float32) for k, v in truth_params.items()}},
                       index=[f"gene{j}" for j in range(n_genes)])
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    obs_cols = {"true_t": np.empty(n_cells, np.float32)}
    if lik.is_count:
        obs_cols["true_size_factor"] = np.empty(n_cells, np.float32)
    true_z = np.empty((n_cells, n_latent), np.float32)
    names = ("spliced", "unspliced") if lik.is_count else ("Ms", "Mu")
    layers = {names[0]: np.float32, names[1]: np.float32}
    if truth_layers:
        layers.update(true_velocity=np.float32, true_state=np.int8, true_t=np.float32)
    skeleton = ad.AnnData(obs=obs, var=var)
    skeleton.uns["simulation"] = dict(n_cells=n_cells, n_genes=n_genes, seed=seed, likelihood=lik.name,
                                      n_latent=n_latent, t_max=t_max, noise=noise,
                                      steady_state_fraction=steady_state_fraction,
                                      counts_per_unit=counts_per_unit, dispersion=dispersion, chunk_cells=chunk)
    zarr_store = path.endswith(".zarr")
    skeleton.write_zarr(path) if zarr_store else skeleton.write_h5ad(path)
    del skeleton, obs
    if zarr_store:
        import zarr

        root = zarr.open_group(path, mode="r+", use_consolidated=False)
    else:
        import h5py

        root = h5py.File(path, "r+")
    try:
        if "layers" not in root:
            grp = root.create_group("layers")
            grp.attrs["encoding-type"], grp.attrs["encoding-version"] = "dict", "0.1.0"
        arrays = {}
        for name, dtype in layers.items():
            shape, chunks = (n_cells, n_genes), (min(chunk, n_cells), n_genes)
            arr = (root.create_array(f"layers/{name}", shape=shape, dtype=dtype, chunks=chunks) if zarr_store
                   else root.create_dataset(f"layers/{name}", shape=shape, dtype=dtype, chunks=chunks))
            arr.attrs["encoding-type"], arr.attrs["encoding-version"] = "array", "0.2.0"
            arrays[name] = arr
        for c, start in enumerate(range(0, n_cells, chunk)):
            stop = min(start + chunk, n_cells)
            m = stop - start
            crng = np.random.default_rng([seed, c])
            z = crng.standard_normal((m, n_latent))
            clock = t_max * norm.cdf(z @ w)
            t = np.repeat(clock[:, None], n_genes, axis=1)
            state = np.where(t < t_s[None, :], 0, 2) + (crng.random((m, n_genes)) < steady_state_fraction)
            t_ind = tt(np.minimum(t, t_s[None, :]))
            u_bar, s_bar = kin.state_means(t_ind, tt(np.maximum(t, t_s[None, :])), r)
            k = torch.as_tensor(state).unsqueeze(-1)
            pick = lambda x: torch.gather(x, -1, k).squeeze(-1)  # noqa: E731, B023
            u_mean, s_mean = pick(u_bar).float(), pick(s_bar).float()
            sf = np.ones(m)
            if lik.is_count:
                sf = np.exp(crng.normal(0.0, 0.3, m))
                obs_cols["true_size_factor"][start:stop] = sf
            sf_t = torch.as_tensor(sf, dtype=torch.float32)[:, None]
            k32 = torch.as_tensor(state)
            with torch.no_grad(), seeded(int(crng.integers(0, 2**31 - 1))):
                u_obs = lik.dist(u_mean, k32, "u", sf_t).sample().numpy()
                s_obs = lik.dist(s_mean, k32, "s", sf_t).sample().numpy()
            if not lik.is_count:
                u_obs, s_obs = np.clip(u_obs, 0.0, None), np.clip(s_obs, 0.0, None)
            arrays[names[0]][start:stop] = s_obs.astype(np.float32)
            arrays[names[1]][start:stop] = u_obs.astype(np.float32)
            if truth_layers:
                _, ds = kin.state_velocities(u_bar, s_bar, t_ind, r)
                arrays["true_velocity"][start:stop] = pick(ds).numpy().astype(np.float32)
                arrays["true_state"][start:stop] = state.astype(np.int8)
                arrays["true_t"][start:stop] = t.astype(np.float32)
            obs_cols["true_t"][start:stop] = clock
            true_z[start:stop] = z
        from anndata.io import write_elem

        for key, val in obs_cols.items():
            write_elem(root["obs"], key, val)
        order = list(root["obs"].attrs["column-order"]) + list(obs_cols)
        root["obs"].attrs["column-order"] = order
        if "obsm" not in root:
            grp = root.create_group("obsm")
            grp.attrs["encoding-type"], grp.attrs["encoding-version"] = "dict", "0.1.0"
        write_elem(root["obsm"], "true_z", true_z)
    finally:
        if hasattr(root, "close"):
            root.close()
    if zarr_store:
        zarr.consolidate_metadata(path)
    return path
