"""Benchmark data: the preprocessed pancreas data and two simulators with ground truth, all cached.

Every data set is returned as an AnnData holding the model input in ``layers["Ms"]`` / ``layers["Mu"]``
(float32, per-gene scaled to about [0, 1]); both models read exactly these two layers.

Simulated data additionally carry ground truth under one set of keys (read with :func:`ground_truth`):

- ``layers["true_t"]``        cells x genes, the time of each cell on each gene's trajectory
- ``layers["true_state"]``    cells x genes, int: 0 induction, 1 induction steady state, 2 repression,
  3 repression steady state
- ``layers["true_velocity"]`` cells x genes, noise-free ds/dt in model (scaled) units
- ``var["true_alpha"], var["true_beta"], var["true_gamma"], var["true_t_"]`` per-gene rates and switch time
- ``var["true_ratio"]``       gamma / beta in model units (the identifiable quantity after scaling)
- ``obs["true_t"]``           one time per cell (when the simulator has a shared clock)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np

from benchmarks.common import CACHE_DIR, quiet

PANCREAS_PATH = Path("/work/shared/data/pancreas.h5ad")

# Tolerance (relative distance to the steady state) below which a simulated cell is labelled steady.
STEADY_TOL = 0.05

# ---------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------


def _cache_path(name: str, params: dict) -> Path:
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return CACHE_DIR / f"{name}_{key}.h5ad"


def cached(name: str, params: dict, build: Callable[[], ad.AnnData], refresh: bool = False) -> ad.AnnData:
    """Return the cached AnnData for ``(name, params)``, building and writing it on first use."""
    path = _cache_path(name, params)
    if path.exists() and not refresh:
        return ad.read_h5ad(path)
    adata = build()
    adata.uns["benchmark_params"] = json.dumps(params, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return adata


# ---------------------------------------------------------------------------------------------------
# pancreas
# ---------------------------------------------------------------------------------------------------


def _build_pancreas() -> ad.AnnData:
    """The velovi tutorial's preprocessing, with scvelo 0.3.4's current function names.

    scvelo 0.3.4's ``filter_and_normalize`` no longer takes ``n_top_genes`` nor log-transforms, so its
    old behaviour is spelled out: gene filter + per-cell normalisation, log1p, 2,000 highly variable genes
    (a no-op here: 1,083 genes pass the filter), moments on 30 PCs / 30 neighbours, then velovi's
    ``preprocess_data`` (min-max scaling and the positive r2 / gamma gene filter). A shared UMAP is
    computed once on the same neighbour graph for the direction metrics.
    """
    import scanpy as sc
    import scvelo as scv
    from velovi import preprocess_data

    adata = ad.read_h5ad(PANCREAS_PATH)
    scv.pp.filter_and_normalize(adata, min_shared_counts=30)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat")
    scv.pp.moments(adata, n_pcs=30, n_neighbors=30)
    adata = preprocess_data(adata, spliced_layer="Ms", unspliced_layer="Mu")
    for key in ("Ms", "Mu"):
        adata.layers[key] = np.asarray(adata.layers[key], dtype=np.float32)
    # scvelo's deterministic velocity is only a by-product of the gene filter; drop it so that no
    # downstream step picks it up by its default key.
    del adata.layers["velocity"]
    sc.tl.umap(adata, random_state=0)
    return adata


def pancreas(refresh: bool = False) -> ad.AnnData:
    """Preprocessed pancreas data (cached under ``benchmarks/cache``)."""
    return cached("pancreas", {"version": 1, "source": str(PANCREAS_PATH)}, _build_pancreas, refresh)


# ---------------------------------------------------------------------------------------------------
# scVelo simulation
# ---------------------------------------------------------------------------------------------------


def _draw_rates(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-normal rates with gamma kept at least 10% away from beta (scVelo divides by gamma - beta)."""
    alpha = np.exp(rng.normal(np.log(5.0), 0.5, n))
    beta = np.exp(rng.normal(np.log(0.6), 0.4, n))
    gamma = np.exp(rng.normal(np.log(0.3), 0.4, n))
    close = np.abs(gamma - beta) < 0.1 * beta
    while close.any():
        gamma[close] = np.exp(rng.normal(np.log(0.3), 0.4, close.sum()))
        close = np.abs(gamma - beta) < 0.1 * beta
    return alpha, beta, gamma


def _minmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = x.min(axis=0)
    rng = x.max(axis=0) - lo
    rng = np.where(rng > 0, rng, 1.0)
    return ((x - lo) / rng).astype(np.float32), lo, rng


def _build_scvelo_sim(
    n_cells: int,
    n_genes: int,
    seed: int,
    t_max: float,
    noise_level: float,
    block_size: int,
    with_truth: bool,
    switch_range: tuple[float, float] = (0.2, 0.85),
    rate_scale: float = 1.0,
) -> ad.AnnData:
    """Concatenate scVelo simulations of gene blocks that share one clock.

    ``scvelo.datasets.simulation`` treats a rate list as per-cell when its length equals ``n_obs`` and
    divides by ``gamma - beta``; so each block of ``block_size`` genes is simulated with scalar rates
    (drawn per block) and per-gene switch times. All blocks use the same ``random_seed`` and ``t_max``,
    hence identical cell times (checked). Noise is added here with the simulator's own formula
    (normal, std = noise_level * 99th percentile / 10) but with independent draws per gene: repeating
    the seed per block would otherwise repeat the noise sequence across blocks.
    """
    import scvelo as scv

    rng = np.random.default_rng(seed)
    n_blocks = int(np.ceil(n_genes / block_size))
    alpha_b, beta_b, gamma_b = _draw_rates(rng, n_blocks)
    # rate_scale < 1 slows every gene down (the same alpha / beta and alpha / gamma): fewer genes reach steady
    # state in the window
    alpha_b, beta_b, gamma_b = alpha_b * rate_scale, beta_b * rate_scale, gamma_b * rate_scale
    fracs = rng.uniform(*switch_range, n_genes)

    u_clean, s_clean, t_sw, alpha, beta, gamma = [], [], [], [], [], []
    t_cells = None
    for b in range(n_blocks):
        genes = np.arange(b * block_size, min((b + 1) * block_size, n_genes))
        sim = scv.datasets.simulation(
            n_obs=n_cells,
            n_vars=len(genes),
            alpha=float(alpha_b[b]),
            beta=float(beta_b[b]),
            gamma=float(gamma_b[b]),
            t_max=t_max,
            switches=list(fracs[genes]),
            noise_model="normal",
            noise_level=0,
            random_seed=seed,
        )
        t_block = sim.obs["true_t"].to_numpy()
        if t_cells is None:
            t_cells = t_block
        elif not np.array_equal(t_cells, t_block):
            raise RuntimeError("scVelo simulation blocks do not share cell times")
        u_clean.append(np.asarray(sim.layers["unspliced"], dtype=np.float64))
        s_clean.append(np.asarray(sim.layers["spliced"], dtype=np.float64))
        t_sw.append(sim.var["true_t_"].to_numpy())
        alpha.append(np.full(len(genes), alpha_b[b]))
        beta.append(np.full(len(genes), beta_b[b]))
        gamma.append(np.full(len(genes), gamma_b[b]))
    u_clean, s_clean = np.hstack(u_clean), np.hstack(s_clean)
    t_sw, alpha, beta, gamma = map(np.concatenate, (t_sw, alpha, beta, gamma))

    noise_u = noise_level * np.percentile(u_clean, 99, axis=0) / 10
    noise_s = noise_level * np.percentile(s_clean, 99, axis=0) / 10
    u = np.clip(u_clean + rng.normal(size=u_clean.shape) * noise_u, 0, None)
    s = np.clip(s_clean + rng.normal(size=s_clean.shape) * noise_s, 0, None)
    mu, _, range_u = _minmax(u)
    ms, _, range_s = _minmax(s)

    adata = ad.AnnData(
        X=ms.copy(),
        layers={"Ms": ms, "Mu": mu},
    )
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{g}" for g in range(n_genes)]
    adata.obs["true_t"] = t_cells
    adata.var["true_alpha"] = alpha
    adata.var["true_beta"] = beta
    adata.var["true_gamma"] = gamma
    adata.var["true_t_"] = t_sw
    adata.var["true_ratio"] = gamma / beta * range_s / range_u
    if not with_truth:
        return adata

    t_mat = np.broadcast_to(t_cells[:, None], u.shape)
    induction = t_mat < t_sw[None, :]
    # the cell sitting exactly at the switch time holds (u0, s0), the state where repression starts
    sw_cell = np.abs(t_cells[:, None] - t_sw[None, :]).argmin(axis=0)
    u0 = u_clean[sw_cell, np.arange(n_genes)]
    s0 = s_clean[sw_cell, np.arange(n_genes)]
    near_ind_ss = (u_clean >= (1 - STEADY_TOL) * alpha / beta) & (s_clean >= (1 - STEADY_TOL) * alpha / gamma)
    near_rep_ss = (u_clean <= STEADY_TOL * u0) & (s_clean <= STEADY_TOL * s0)
    state = np.where(induction, np.where(near_ind_ss, 1, 0), np.where(near_rep_ss, 3, 2)).astype(np.int8)

    adata.layers["true_t"] = np.ascontiguousarray(t_mat, dtype=np.float32)
    adata.layers["true_state"] = state
    adata.layers["true_velocity"] = ((beta * u_clean - gamma * s_clean) / range_s).astype(np.float32)
    return adata


def scvelo_simulation(
    n_cells: int,
    n_genes: int,
    seed: int = 0,
    t_max: float = 20.0,
    noise_level: float = 1.0,
    block_size: int = 5,
    with_truth: bool = True,
    refresh: bool = False,
    switch_range: tuple[float, float] = (0.2, 0.85),
    rate_scale: float = 1.0,
) -> ad.AnnData:
    """scVelo-simulated cells x genes with varied per-gene rates and switch times (cached).

    Ms/Mu are the noisy abundances min-max scaled per gene (no kNN smoothing: the truth is per cell).
    ``switch_range`` bounds the switch times as fractions of ``t_max``; ``rate_scale`` multiplies every rate
    (below 1: genes that do not reach steady state within the window).
    """
    params = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "seed": seed,
        "t_max": t_max,
        "noise_level": noise_level,
        "block_size": block_size,
        "with_truth": with_truth,
        "version": 1,
    }
    if tuple(switch_range) != (0.2, 0.85) or rate_scale != 1.0:  # the default's cache key is unchanged
        params.update(switch_range=list(switch_range), rate_scale=rate_scale)

    def build() -> ad.AnnData:
        return _build_scvelo_sim(n_cells, n_genes, seed, t_max, noise_level, block_size, with_truth,
                                 tuple(switch_range), rate_scale)

    return cached("scvelo_sim", params, build, refresh)


# ---------------------------------------------------------------------------------------------------
# velopyro's own simulator (adapter isolated here: only this block knows its key names)
# ---------------------------------------------------------------------------------------------------

# velopyro key -> benchmark key. Adjust here if velopyro.datasets.simulate names things differently.
VELOPYRO_SIM_KEYS = {
    "layers": {
        "Ms": "Ms",
        "Mu": "Mu",
        "true_t": "true_t",
        "true_state": "true_state",
        "true_velocity": "true_velocity",
    },
    "var": {
        "true_alpha": "true_alpha",
        "true_beta": "true_beta",
        "true_gamma": "true_gamma",
        "true_t_": "true_t_",
    },
}


def _build_velopyro_sim(n_cells: int, n_genes: int, seed: int) -> ad.AnnData:
    from velopyro.datasets import simulate

    sim = simulate(n_cells, n_genes, seed=seed)
    out = ad.AnnData(X=np.asarray(sim.layers[VELOPYRO_SIM_KEYS["layers"]["Ms"]], dtype=np.float32).copy())
    out.obs_names = list(sim.obs_names)
    out.var_names = list(sim.var_names)
    for src, dst in VELOPYRO_SIM_KEYS["layers"].items():
        if src in sim.layers:
            x = sim.layers[src]
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            out.layers[dst] = x.astype(np.int8 if dst == "true_state" else np.float32)
    for src, dst in VELOPYRO_SIM_KEYS["var"].items():
        if src in sim.var:
            out.var[dst] = sim.var[src].to_numpy()
    if "true_ratio" in sim.var:
        out.var["true_ratio"] = sim.var["true_ratio"].to_numpy()
    else:  # simulate() returns its model input directly, so rates are already in model units
        out.var["true_ratio"] = out.var["true_gamma"] / out.var["true_beta"]
    if "true_t" in sim.obs:
        out.obs["true_t"] = sim.obs["true_t"].to_numpy()
    return out


def velopyro_simulation(n_cells: int, n_genes: int, seed: int = 0, refresh: bool = False) -> ad.AnnData:
    """velopyro's simulator output mapped to the benchmark's ground-truth keys (cached)."""
    params = {"n_cells": n_cells, "n_genes": n_genes, "seed": seed, "version": 1}
    return cached("velopyro_sim", params, lambda: _build_velopyro_sim(n_cells, n_genes, seed), refresh)


def branching_simulation(n_cells: int, n_genes: int, seed: int = 0, refresh: bool = False) -> ad.AnnData:
    """:func:`velopyro.datasets.simulate_branching` (one progenitor, two lineages; cached), with the
    benchmark's ground-truth keys (no switch time: ``var['true_t_']`` is NaN)."""

    def build() -> ad.AnnData:
        from velopyro.datasets import simulate_branching

        sim = simulate_branching(n_cells=n_cells, n_genes=n_genes, seed=seed)
        if "true_t_" not in sim.var:
            sim.var["true_t_"] = np.nan
        for key in ("Ms", "Mu", "true_velocity", "true_t"):
            sim.layers[key] = np.asarray(sim.layers[key], dtype=np.float32)
        for key in ("spliced", "unspliced"):  # the count likelihoods' layers, named as in pancreas
            sim.layers[f"raw_{key}"] = sim.layers[key].copy()
        return sim

    return cached("branching_sim", {"n_cells": n_cells, "n_genes": n_genes, "seed": seed, "version": 1}, build,
                  refresh)


# ---------------------------------------------------------------------------------------------------
# ground truth reader
# ---------------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Ground truth of a simulated data set, in model units."""

    time: np.ndarray  # cells x genes
    cell_time: np.ndarray  # cells
    state: np.ndarray | None  # cells x genes, int 0..3
    velocity: np.ndarray | None  # cells x genes
    ratio: np.ndarray  # genes, gamma / beta
    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    t_switch: np.ndarray


def ground_truth(adata: ad.AnnData) -> GroundTruth:
    """Read the ground truth written by either simulator wrapper in this module."""

    def layer(key):
        if key not in adata.layers:
            return None
        x = adata.layers[key]
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x)

    time = layer("true_t")
    if time is None:
        time = np.broadcast_to(adata.obs["true_t"].to_numpy()[:, None], adata.shape)
    cell_time = adata.obs["true_t"].to_numpy() if "true_t" in adata.obs else time.mean(axis=1)
    state = layer("true_state")
    return GroundTruth(
        time=np.asarray(time, dtype=float),
        cell_time=np.asarray(cell_time, dtype=float),
        state=None if state is None else state.astype(int),
        velocity=layer("true_velocity"),
        ratio=adata.var["true_ratio"].to_numpy(dtype=float),
        alpha=adata.var["true_alpha"].to_numpy(dtype=float),
        beta=adata.var["true_beta"].to_numpy(dtype=float),
        gamma=adata.var["true_gamma"].to_numpy(dtype=float),
        t_switch=adata.var["true_t_"].to_numpy(dtype=float),
    )


def velopyro_simulator_available() -> bool:
    """Whether ``velopyro.datasets.simulate`` can be imported yet."""
    try:
        from velopyro.datasets import simulate  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not ready"
        return False
    return True


def main() -> None:
    """Build the caches: ``python -m benchmarks.data [--refresh]``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--refresh", action="store_true", help="rebuild cached files")
    args = parser.parse_args()
    quiet()
    a = pancreas(refresh=args.refresh)
    print("pancreas", a.shape)
    s = scvelo_simulation(1000, 100, refresh=args.refresh)
    print("scvelo simulation", s.shape, "states", np.bincount(s.layers["true_state"].ravel(), minlength=4))


if __name__ == "__main__":
    main()
