"""A branching RNA-velocity simulator whose generator is independent of velopyro's model.

:func:`velopyro.datasets.simulate` draws from the model's own closed form (veloVI's eq. 1-12: piecewise
constant transcription, four kinetic states), so a fit on it is checked against its own assumptions.
:func:`simulate_branching` is a separate generator: a tree (one progenitor segment, then ``n_lineages``
branches), a smooth, time-varying and lineage-specific transcription rate ``alpha_g(t)`` and the kinetics

    du/dt = alpha_g(t) - beta_g u,        ds/dt = beta_g u - gamma_g s

integrated numerically (classical fourth-order Runge-Kutta on a fixed grid, each cell reached by a last
partial step from its grid point). No closed form, switch time or discrete state is used, so the data
break veloVI's assumptions the way real trajectories do: transcription ramps up and down gradually,
several programs overlap, and the same gene is induced in one lineage while it is repressed in another.

Transcription programs (``var["program"]``; ``alpha_g(t) = a_g p_g(t)``, ``p_g`` in [0, 1]):

- ``"progenitor"``: a sigmoid on-ramp early in the progenitor and a sigmoid off-ramp near the branch
  point, the same in every lineage (a transient progenitor gene);
- ``"shared"``: a sigmoid on-ramp at a random time and, for most genes, a later off-ramp, the same in
  every lineage (induced in all);
- ``"switch"``: on in the progenitor at a level ``b_g``; after the branch point it rises to 1 in its
  target lineage (``var["target_lineage"]``) and falls to 0 in every other one (induced in one lineage,
  repressed in the others);
- ``"lineage"``: silent in the progenitor, induced only in its target lineage.

Post-branch ramps use the smootherstep ``6x^5 - 15x^4 + 10x^3`` of the time since the branch point (a
sigmoid-shaped ramp that is exactly 0 before the branch, so every lineage shares the progenitor's path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.special import expit

if TYPE_CHECKING:
    import anndata

__all__ = ["simulate_branching"]

_PROGRAMS = ("progenitor", "shared", "switch", "lineage")
_DEFAULT_WEIGHTS = {"progenitor": 0.2, "shared": 0.2, "switch": 0.35, "lineage": 0.25}


def _smootherstep(x: np.ndarray) -> np.ndarray:
    """``6x^5 - 15x^4 + 10x^3`` on ``clip(x, 0, 1)``: a C2 ramp from 0 to 1."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


class _Programs:
    """Per-gene transcription programs; :meth:`alpha` evaluates ``alpha_g(t)`` for a lineage."""

    def __init__(self, rng: np.random.Generator, kind: np.ndarray, target: np.ndarray, amp: np.ndarray,
                 t_branch: float, t_max: float) -> None:
        n = kind.size
        seg = t_max - t_branch
        self.kind, self.target, self.amp, self.t_branch = kind, target, amp, t_branch
        self.on = np.full(n, -np.inf)  # centre of the sigmoid on-ramp (-inf: always on)
        self.off = np.full(n, np.inf)  # centre of the sigmoid off-ramp (inf: never off)
        self.w_on = rng.uniform(0.04, 0.08, n) * t_max  # sigmoid widths: smooth, never a step
        self.w_off = rng.uniform(0.04, 0.08, n) * t_max
        self.delay = rng.uniform(0.0, 0.3, n) * seg  # post-branch ramp: start after the branch point
        self.w_branch = rng.uniform(0.25, 0.6, n) * seg  # ... and duration
        self.base = rng.uniform(0.3, 0.6, n)  # switch genes: level in the progenitor
        c_on, c_off = rng.uniform(size=n), rng.uniform(size=n)
        late_off = rng.random(n) < 0.6

        prog = kind == 0
        self.on[prog] = (-0.2 + 0.5 * c_on[prog]) * t_branch
        self.off[prog] = (0.6 + 0.4 * c_off[prog]) * t_branch
        shared = kind == 1
        self.on[shared] = (0.1 + 0.45 * c_on[shared]) * t_max
        self.off[shared] = np.where(late_off[shared], self.on[shared] + (0.25 + 0.3 * c_off[shared]) * t_max,
                                    np.inf)
        switch = kind == 2
        self.on[switch] = (-0.2 + 0.6 * c_on[switch]) * t_branch

    def alpha(self, t: np.ndarray, lineage: np.ndarray) -> np.ndarray:
        """``alpha_g(t)`` for ``t`` and ``lineage`` broadcastable to ``(..., 1)``; returns ``(..., n_genes)``."""
        ramp_on = expit((t - self.on) / self.w_on)
        ramp_off = 1.0 - expit((t - self.off) / self.w_off)
        r = _smootherstep((t - self.t_branch - self.delay) / self.w_branch)
        tgt = lineage == self.target
        branch = np.where(self.kind == 2, np.where(tgt, self.base + (1.0 - self.base) * r, self.base * (1.0 - r)),
                          np.where(self.kind == 3, np.where(tgt, r, 0.0), 1.0))
        return self.amp * ramp_on * ramp_off * branch


def _allocate(weights: Mapping[str, float], n: int) -> np.ndarray:
    """Program codes (0..3) for ``n`` genes in proportion to ``weights`` (largest remainder), in order."""
    unknown = set(weights) - set(_PROGRAMS)
    if unknown:
        raise ValueError(f"unknown program(s) {sorted(unknown)}; choose from {_PROGRAMS}.")
    w = np.array([float(weights.get(p, 0.0)) for p in _PROGRAMS])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"program_weights must be non-negative with a positive sum, got {dict(weights)!r}.")
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    return np.repeat(np.arange(len(_PROGRAMS)), counts)


def simulate_branching(
    n_cells: int = 1000,
    n_genes: int = 100,
    n_lineages: int = 2,
    noise: Literal["poisson", "normal"] = "poisson",
    noise_level: float = 0.1,
    seed: int = 0,
    *,
    t_max: float = 20.0,
    branch_fraction: float = 0.4,
    dt: float = 0.02,
    dispersion: float | None = None,
    size_factor_sd: float = 0.3,
    embedding_noise: float = 0.02,
    program_weights: Mapping[str, float] | None = None,
) -> anndata.AnnData:
    """Simulate a branching trajectory with numerically integrated, lineage-specific kinetics.

    An independent generator, not velopyro's (veloVI's) model: transcription is a smooth function of time
    that differs between lineages, and ``du/dt = alpha(t) - beta u``, ``ds/dt = beta u - gamma s`` are
    integrated with RK4 steps, never with the closed form of eq. 1-12 (see the module docstring for the
    gene programs). Cells lie on a tree: a progenitor segment ``[0, branch_fraction * t_max)`` and then
    ``n_lineages`` branches on ``[branch_fraction * t_max, t_max]``, with cells spread uniformly over the
    tree's total length. Only ``numpy.random.default_rng(seed)`` is drawn from.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    n_lineages
        Number of branches after the progenitor segment (at least 2).
    noise
        How the abundances behind ``layers["Ms"]``/``["Mu"]`` are made noisy: ``"poisson"`` (the raw counts
        divided by the cell's size factor and the gene's depth) or ``"normal"`` (the noiseless abundance
        plus Gaussian noise of sd ``noise_level`` times the gene's 99th percentile, clipped at 0). The raw
        count layers are count draws in both cases.
    noise_level
        Relative noise: the Gaussian sd in units of the gene's 99th percentile (``"normal"``), and for the
        counts the coefficient of variation of a Poisson draw at that percentile and size factor 1 (the
        per-gene depth is ``1 / (noise_level**2 * p99)``).
    seed
        Seed of ``numpy.random.default_rng``; the same arguments give the same data.
    t_max
        Length of the time axis (the root is at 0).
    branch_fraction
        Where the branch point lies, as a fraction of ``t_max`` (in (0, 1)).
    dt
        RK4 step of the integration grid.
    dispersion
        ``None``: Poisson counts; a positive value: negative binomial counts with this inverse dispersion
        ``theta`` (a Gamma-Poisson mixture).
    size_factor_sd
        Standard deviation of the per-cell log size factor (median 1).
    embedding_noise
        Gaussian noise of ``obsm["X_umap"]``, in units of the tree's depth (the root-to-tip distance is 1).
    program_weights
        Relative share of each program among the genes, keys ``"progenitor"``, ``"shared"``,
        ``"switch"``, ``"lineage"`` (default 0.2, 0.2, 0.35, 0.25); switch and lineage genes cycle through
        the lineages as targets.

    Returns
    -------
    anndata.AnnData
        ``X`` = ``layers["Ms"]``. Observations:

        - ``layers["spliced"]``, ``["unspliced"]``: integer counts (int32)
        - ``layers["Ms"]``, ``["Mu"]``: the noisy abundances min-max scaled per gene to [0, 1] (float32, no kNN)
        - ``obs["lineage"]`` (categorical ``"progenitor"``, ``"lineage0"``, ...), ``obs["clusters"]``
          (lineage x time tertile of its segment, e.g. ``"progenitor_0"``, ``"lineage1_2"``),
          ``uns["transitions"]``: the true cluster transitions as ``[source, target]`` pairs
        - ``obsm["X_umap"]``: a 2-D tree (the progenitor along the x axis, each lineage along its own ray
          from the branch point) with small noise; ``obsm["true_velocity_umap"]``: the direction of time
          in it

        Truth (velocities in units of the scaled layers per unit of ``true_t``):

        - ``obs["true_t"]``: time since the root; ``layers["true_t"]``: the same, per gene;
          ``obs["true_size_factor"]``
        - ``layers["true_velocity"]``: ``(beta u - gamma s) / range_s``, ``["true_velocity_u"]``:
          ``(alpha(t) - beta u) / range_u``, where ``range_*`` is the gene's range that scaled Ms/Mu;
          ``layers["true_u"]``, ``["true_s"]``: the noiseless abundances, ``["true_transcription"]``:
          ``alpha_g(t)`` of the cell
        - ``var["true_alpha"]`` (the program's maximum over time and lineages), ``["true_beta"]``,
          ``["true_gamma"]``, ``["true_ratio"]`` = ``gamma / beta * range_s / range_u`` (the ratio in
          the scaled layers' units), ``["program"]``, ``["target_lineage"]`` (-1: none),
          ``["true_depth_u"]``, ``["true_depth_s"]``
        - ``uns["simulation"]``: the arguments.
    """
    import anndata as ad
    import pandas as pd

    if int(n_lineages) != n_lineages or n_lineages < 2:
        raise ValueError(f"n_lineages must be an integer >= 2, got {n_lineages!r}.")
    if noise not in ("poisson", "normal"):
        raise ValueError(f"noise must be 'poisson' or 'normal', got {noise!r}.")
    if not 0.0 < branch_fraction < 1.0:
        raise ValueError(f"branch_fraction must lie in (0, 1), got {branch_fraction!r}.")
    if noise_level <= 0 or dt <= 0 or t_max <= 0:
        raise ValueError("noise_level, dt and t_max must be positive.")
    if dispersion is not None and dispersion <= 0:
        raise ValueError(f"dispersion must be positive or None, got {dispersion!r}.")
    n_lineages = int(n_lineages)
    rng = np.random.default_rng(seed)
    t_branch = branch_fraction * t_max
    seg = t_max - t_branch

    # genes: programs, targets, log-normal rates
    kind = rng.permutation(_allocate(program_weights or _DEFAULT_WEIGHTS, n_genes))
    target = np.full(n_genes, -1)
    for k in (2, 3):
        idx = np.flatnonzero(kind == k)
        target[idx] = np.arange(idx.size) % n_lineages
    amp = np.exp(rng.normal(np.log(5.0), 0.5, n_genes))
    beta = np.exp(rng.normal(np.log(0.6), 0.4, n_genes))
    gamma = np.exp(rng.normal(np.log(0.3), 0.4, n_genes))
    prog = _Programs(rng, kind, target, amp, t_branch, t_max)

    # RK4 on a grid, every lineage at once (identical before the branch point); start at steady state
    n_steps = int(np.ceil(t_max / dt))
    h = t_max / n_steps
    lin_all = np.arange(n_lineages)[:, None]
    t_half = np.arange(2 * n_steps + 1)[:, None, None] * (h / 2)
    a_half = prog.alpha(t_half, lin_all[None])  # (2 n_steps + 1, n_lineages, n_genes)

    def f(u: np.ndarray, s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a - beta * u, beta * u - gamma * s

    def rk4(u, s, a0, a_mid, a1, step):
        k1u, k1s = f(u, s, a0)
        k2u, k2s = f(u + step / 2 * k1u, s + step / 2 * k1s, a_mid)
        k3u, k3s = f(u + step / 2 * k2u, s + step / 2 * k2s, a_mid)
        k4u, k4s = f(u + step * k3u, s + step * k3s, a1)
        return (u + step / 6 * (k1u + 2 * k2u + 2 * k3u + k4u),
                s + step / 6 * (k1s + 2 * k2s + 2 * k3s + k4s))

    u_grid = np.empty((n_steps + 1, n_lineages, n_genes))
    s_grid = np.empty_like(u_grid)
    u_grid[0], s_grid[0] = a_half[0] / beta, a_half[0] / gamma
    for i in range(n_steps):
        u_grid[i + 1], s_grid[i + 1] = rk4(u_grid[i], s_grid[i], a_half[2 * i], a_half[2 * i + 1],
                                           a_half[2 * i + 2], h)

    # cells: a segment by its length, a uniform time on it; a last partial RK4 step from the grid
    lengths = np.array([t_branch] + [seg] * n_lineages)
    segment = rng.choice(n_lineages + 1, size=n_cells, p=lengths / lengths.sum())  # 0 progenitor, 1.. lineages
    start = np.where(segment == 0, 0.0, t_branch)
    t_cell = start + rng.uniform(size=n_cells) * np.where(segment == 0, t_branch, seg)
    path = np.maximum(segment - 1, 0)  # progenitor cells: any path (all equal before the branch)
    k = np.minimum((t_cell / h).astype(int), n_steps - 1)
    rest = (t_cell - k * h)[:, None]
    tc, pc = t_cell[:, None], path[:, None]
    a_cell = prog.alpha(tc, pc)
    u_true, s_true = rk4(u_grid[k, path], s_grid[k, path], a_half[2 * k, path],
                         prog.alpha(k[:, None] * h + rest / 2, pc), a_cell, rest)
    true_alpha = a_half.max(axis=(0, 1))

    # counts: Poisson (or Gamma-Poisson) of abundance x size factor x per-gene depth
    sf = np.exp(rng.normal(0.0, size_factor_sd, n_cells))
    sf /= np.median(sf)
    p99_u = np.maximum(np.percentile(u_true, 99, axis=0), 1e-12)
    p99_s = np.maximum(np.percentile(s_true, 99, axis=0), 1e-12)
    depth_u, depth_s = 1.0 / (noise_level**2 * p99_u), 1.0 / (noise_level**2 * p99_s)

    def counts(x: np.ndarray, depth: np.ndarray) -> np.ndarray:
        mean = x * sf[:, None] * depth
        if dispersion is not None:
            mean = rng.gamma(dispersion, mean / dispersion)
        return rng.poisson(mean)

    unspliced, spliced = counts(u_true, depth_u), counts(s_true, depth_s)
    if noise == "poisson":
        u_obs = unspliced / (sf[:, None] * depth_u)
        s_obs = spliced / (sf[:, None] * depth_s)
    else:
        u_obs = np.clip(u_true + rng.normal(size=u_true.shape) * noise_level * p99_u, 0.0, None)
        s_obs = np.clip(s_true + rng.normal(size=s_true.shape) * noise_level * p99_s, 0.0, None)

    def minmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = x.min(axis=0)
        rng_ = x.max(axis=0) - lo
        rng_ = np.where(rng_ > 0, rng_, 1.0)
        return ((x - lo) / rng_).astype(np.float32), rng_

    mu, range_u = minmax(u_obs)
    ms, range_s = minmax(s_obs)

    # labels: lineage, lineage x time tertile, true transitions
    lineage_names = ["progenitor"] + [f"lineage{j}" for j in range(n_lineages)]
    tertile = np.minimum(((t_cell - start) / np.where(segment == 0, t_branch, seg) * 3).astype(int), 2)
    cluster_names = [f"{name}_{q}" for name in lineage_names for q in range(3)]
    transitions = [["progenitor_0", "progenitor_1"], ["progenitor_1", "progenitor_2"]]
    for name in lineage_names[1:]:
        transitions += [["progenitor_2", f"{name}_0"], [f"{name}_0", f"{name}_1"], [f"{name}_1", f"{name}_2"]]

    # embedding: the progenitor along x, lineage j along its own ray from the branch point
    angles = np.linspace(-np.pi / 4, np.pi / 4, n_lineages)
    direction = np.where(segment[:, None] == 0, [[1.0, 0.0]],
                         np.stack([np.cos(angles), np.sin(angles)], axis=1)[path])
    umap = np.where(segment[:, None] == 0, 0.0, [[branch_fraction, 0.0]]) + \
        direction * ((t_cell - start) / t_max)[:, None]
    umap = umap + rng.normal(0.0, embedding_noise, umap.shape)

    adata = ad.AnnData(ms.copy())
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.layers["spliced"] = spliced.astype(np.int32)
    adata.layers["unspliced"] = unspliced.astype(np.int32)
    adata.layers["Ms"], adata.layers["Mu"] = ms, mu
    adata.obs["true_t"] = t_cell.astype(np.float32)
    adata.obs["lineage"] = pd.Categorical.from_codes(segment, categories=lineage_names)
    adata.obs["clusters"] = pd.Categorical.from_codes(segment * 3 + tertile, categories=cluster_names)
    adata.obs["true_size_factor"] = sf.astype(np.float32)
    adata.obsm["X_umap"] = umap.astype(np.float32)
    adata.obsm["true_velocity_umap"] = (direction / t_max).astype(np.float32)
    adata.layers["true_t"] = np.repeat(t_cell[:, None], n_genes, axis=1).astype(np.float32)
    adata.layers["true_velocity"] = ((beta * u_true - gamma * s_true) / range_s).astype(np.float32)
    adata.layers["true_velocity_u"] = ((a_cell - beta * u_true) / range_u).astype(np.float32)
    adata.layers["true_u"] = u_true.astype(np.float32)
    adata.layers["true_s"] = s_true.astype(np.float32)
    adata.layers["true_transcription"] = a_cell.astype(np.float32)
    adata.var["true_alpha"] = true_alpha.astype(np.float32)
    adata.var["true_beta"] = beta.astype(np.float32)
    adata.var["true_gamma"] = gamma.astype(np.float32)
    adata.var["true_ratio"] = (gamma / beta * range_s / range_u).astype(np.float32)
    adata.var["program"] = pd.Categorical.from_codes(kind, categories=list(_PROGRAMS))
    adata.var["target_lineage"] = target.astype(np.int64)
    adata.var["true_depth_u"] = depth_u.astype(np.float32)
    adata.var["true_depth_s"] = depth_s.astype(np.float32)
    adata.uns["transitions"] = transitions
    adata.uns["simulation"] = dict(
        generator="branching", n_cells=n_cells, n_genes=n_genes, n_lineages=n_lineages, noise=noise,
        noise_level=noise_level, seed=seed, t_max=t_max, branch_fraction=branch_fraction, dt=dt,
        dispersion=-1.0 if dispersion is None else dispersion, size_factor_sd=size_factor_sd,
        embedding_noise=embedding_noise, program_weights=dict(program_weights or _DEFAULT_WEIGHTS))
    return adata
