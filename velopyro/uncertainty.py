"""veloVI's read-outs of how far to trust the fit: directional uncertainty and permutation scores.

Both follow Gayoso et al. (Nat Methods 2024), computed streamed over batches of cells so that memory
does not grow with draws x cells x genes:

- **Intrinsic (directional) uncertainty** of cell n: the spread, over posterior draws, of the cosine
  similarity between each draw's velocity v_n^(l) and the mean velocity over the draws (cosine of the
  gene-centred vectors, as veloVI). A cell whose velocity direction changes from draw to draw has a high
  variance and a low mean cosine. Only ``n_samples x batch_size x genes`` velocities are in memory. Each
  draw's velocity weighs the four states by their posterior given the cell's data by default (veloVI weighs
  them by the draw of pi; ``state_weights="pi"``): pi mixes induction and repression in every cell, and that
  mixing then hides the cells whose data leave the direction open (:mod:`velopyro.posterior`).
- **Extrinsic uncertainty**: the same statistics of the cell's extrapolated future state
  ``x_n + sum_j p_nj^(l) (x_j - x_n)``, with ``p^(l)`` the transition probabilities of the velocity graph
  of draw l (:func:`velopyro.tl.transition_matrix`): how much the uncertainty in velocity moves the
  predicted next state among the neighbours. veloVI's tutorial compares the extrapolated states
  ``P^(l) x`` themselves; their cosines are dominated by the cell's own expression, so velopyro compares
  the displacements ``P^(l) x - x``.
- **Permutation score** of gene g in cell type c: a two-sample t-statistic (Student, equal variances)
  of the fit's absolute error ``|s_fit - s| + |u_fit - u|`` on the type's cells with u and s permuted
  (independently, per gene, among the type's cells) against the error on the real data. The model is not
  refitted: the permuted cells go through the encoder and the fitted kinetics. A high score: the kinetics
  describe the gene's dynamics in that type far better than its shuffled values; near 0 or negative: the
  gene shows no dynamics the model captures there (veloVI: "the cell type-specific dynamics are not
  captured").

Keys written by :func:`write_directional_uncertainty` and :meth:`velopyro.VeloPyro.get_permutation_scores`
(veloVI's names):

==============================================  ===================================================================
``obs["directional_cosine_sim_variance"]``      variance over draws of the cosine to the mean velocity
``obs["directional_cosine_sim_difference"]``    95th - 5th percentile of those cosines
``obs["directional_cosine_sim_mean"]``          their mean (1: all draws point the same way)
``obs["directional_variance"]``                 variance over draws of the angle ``arccos(cosine)``
``obs["directional_difference"]``               95th - 5th percentile of the angle
``obs["<key>_extrinsic"]``                      the same five, for the extrapolated future state
``varm["permutation_scores"]``                  genes x cell types t-statistics
``uns["permutation_scores"]``                   ``labels_key``, ``cell_types`` (the columns), ``max_cells`` (-1: all)
``layers["velocity_lower"]``                    lower bound of the equal-tailed posterior interval of velocity
``layers["velocity_upper"]``                    its upper bound (cells x genes)
``uns["velocity_interval"]``                    ``level``, ``n_samples``, ``mode``, ``state_weights`` of that interval
==============================================  ===================================================================

**Posterior intervals of velocity** (:func:`velocity_quantiles`, :meth:`velopyro.VeloPyro.get_velocity_interval`):
equal-tailed quantiles over posterior draws of each cell's velocity (the velocity of eq. 2 at the cell's
time under each draw of z and pi, the states weighted as in :meth:`velopyro.VeloPyro.get_velocity`),
streamed over cells. They carry the uncertainty of the variational posterior q(z, pi | u, s) (eq. 22)
only: the kinetic rates and switch times are point estimates, as in veloVI, and velocity's scale is
identifiable only up to a per-gene time scale (rates x c, times / c give the same fit). Their coverage of
a simulated truth is measured in ``benchmarks/uncertainty_groundtruth.py`` (``docs/uncertainty.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import ttest_ind

from . import posterior
from ._rng import seeded
from ._validation import VelopyroInputError
from .data import VeloData

__all__ = ["directional_statistics", "statistics_from_cosines", "STAT_NAMES", "velocity_draws_by_batch",
           "permutation_scores", "velocity_quantiles", "interval_coverage"]

#: The five per-cell statistics, in veloVI's names.
STAT_NAMES = ("directional_cosine_sim_variance", "directional_cosine_sim_difference",
              "directional_cosine_sim_mean", "directional_variance", "directional_difference")


def directional_statistics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell spread of the direction of ``draws`` around their mean.

    Parameters
    ----------
    draws
        ``(n_draws, cells, genes)`` vectors (velocities, or displacements to the future state).

    Returns
    -------
    dict of str to numpy.ndarray
        :data:`STAT_NAMES` -> ``(cells,)``. Cells whose vectors are all zero get cosine 0.
    """
    x = np.asarray(draws, dtype=np.float64)
    x = x - x.mean(-1, keepdims=True)  # gene-centred, as veloVI's cosine
    m = x.mean(0)
    nx, nm = np.linalg.norm(x, axis=-1), np.linalg.norm(m, axis=-1)
    den = nx * nm[None, :]
    cos = np.divide(np.einsum("dng,ng->dn", x, m), den, out=np.zeros(den.shape), where=den > 0)
    return statistics_from_cosines(np.clip(cos, -1.0, 1.0))


def statistics_from_cosines(cos: np.ndarray) -> dict[str, np.ndarray]:
    """The five statistics of :data:`STAT_NAMES` from ``(n_draws, cells)`` cosines to the mean.

    Parameters
    ----------
    cos
        Cosine similarities in [-1, 1].

    Returns
    -------
    dict of str to numpy.ndarray
        :data:`STAT_NAMES` -> ``(cells,)``.
    """
    ang = np.arccos(cos)
    p_cos, p_ang = np.percentile(cos, [5, 95], axis=0), np.percentile(ang, [5, 95], axis=0)
    return {"directional_cosine_sim_variance": cos.var(0),
            "directional_cosine_sim_difference": p_cos[1] - p_cos[0],
            "directional_cosine_sim_mean": cos.mean(0),
            "directional_variance": ang.var(0),
            "directional_difference": p_ang[1] - p_ang[0]}


def velocity_draws_by_batch(
    model: Any, n_samples: int, mode: str = "spliced", state_weights: str = posterior.VELOCITY_WEIGHTS,
    batch_size: int = 256,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(cell_positions, draws)`` per batch of cells, ``draws`` of shape ``(n_samples, B, genes)``.

    Parameters
    ----------
    model
        A fitted :class:`velopyro.VeloPyro` (seeded by the caller).
    n_samples
        Posterior draws per cell.
    mode, state_weights
        As :meth:`velopyro.VeloPyro.get_velocity`.
    batch_size
        Cells per batch.

    Yields
    ------
    tuple of numpy.ndarray
        The batch's cell positions and its velocity draws.
    """
    buf: list[np.ndarray] = []
    idx = None
    for _, sno, smp in posterior.iterate_samples(model.model, model.guide, model.data, n_samples=n_samples,
                                                 batch_size=batch_size, device=model.device):
        if sno == 0 and buf:
            yield idx, np.stack(buf)
            buf = []
        idx = smp["idx"].cpu().numpy()
        buf.append(posterior.velocity(smp, "mean", mode, state_weights).cpu().numpy())
    if buf:
        yield idx, np.stack(buf)


def velocity_quantiles(
    model: Any, quantiles: Any, n_samples: int = 100, mode: str = "spliced",
    state_weights: str = posterior.VELOCITY_WEIGHTS, batch_size: int = 256,
) -> np.ndarray:
    """Quantiles over posterior draws of each cell's velocity, streamed over batches of cells.

    Memory is ``n_samples x batch_size x genes`` for the draws plus the output, never draws x cells x
    genes.

    Parameters
    ----------
    model
        A fitted :class:`velopyro.VeloPyro` (seeded by the caller, e.g. with :func:`velopyro._rng.seeded`).
    quantiles
        Probabilities in [0, 1] (a number or a sequence).
    n_samples
        Posterior draws per cell (the quantiles' resolution: 100 draws resolve the 5% and 95% quantiles
        to about one draw).
    mode, state_weights
        As :meth:`velopyro.VeloPyro.get_velocity`.
    batch_size
        Cells per batch.

    Returns
    -------
    numpy.ndarray
        ``(len(quantiles), cells, genes)`` float32 (``(cells, genes)`` for a single number).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if q.size == 0 or not np.all((q >= 0) & (q <= 1)):
        raise VelopyroInputError(f"quantiles must lie in [0, 1], got {quantiles!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise VelopyroInputError(f"n_samples must be >= 2 (an integer) for an interval, got {n_samples!r}")
    out = np.empty((q.size, model.n_cells, model.n_genes), dtype=np.float32)
    for idx, draws in velocity_draws_by_batch(model, n_samples, mode, state_weights, batch_size):
        out[:, idx] = np.quantile(draws, q.ravel(), axis=0)
    return out[0] if q.ndim == 0 else out


def interval_coverage(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, axis: int | None = None) -> Any:
    """Share of ``truth`` inside ``[lower, upper]`` (NaN truths are left out).

    Parameters
    ----------
    lower, upper, truth
        Arrays of one shape (e.g. cells x genes).
    axis
        None: one share over every entry; ``0``: one share per column (per gene for cells x genes).

    Returns
    -------
    float or numpy.ndarray
        The empirical coverage.
    """
    lower, upper, truth = (np.asarray(a, dtype=np.float64) for a in (lower, upper, truth))
    if not lower.shape == upper.shape == truth.shape:
        raise VelopyroInputError(f"lower, upper and truth must have one shape, got {lower.shape}, {upper.shape}, "
                                 f"{truth.shape}")
    if np.any(lower > upper):
        raise VelopyroInputError("lower exceeds upper somewhere; pass (lower, upper) in that order")
    ok = np.isfinite(truth)
    inside = (truth >= lower) & (truth <= upper) & ok
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = inside.sum(axis) / ok.sum(axis)
    return float(cov) if axis is None else cov


def _labels(adata: Any, labels_key: str, n_cells: int) -> pd.Categorical:
    if labels_key not in adata.obs:
        raise VelopyroInputError(
            f"labels_key {labels_key!r} is not a column of adata.obs (available: {list(adata.obs.columns)}); "
            "pass the cell-type column, e.g. labels_key='clusters'"
        )
    lab = pd.Categorical(adata.obs[labels_key])
    if len(lab) != n_cells:
        raise VelopyroInputError(f"adata has {len(lab)} cells, the model {n_cells}; pass the fitted AnnData")
    if pd.isna(np.asarray(lab, dtype=object)).any():
        raise VelopyroInputError(f"adata.obs[{labels_key!r}] has missing labels; label or drop those cells")
    return lab


def permutation_scores(
    model: Any, adata: Any, labels_key: str, n_samples: int = 10, batch_size: int = 256, seed: int = 0,
    fit_fn: Callable[[VeloData, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    max_cells: int | None = None,
) -> pd.DataFrame:
    """veloVI's permutation score per gene and cell type (see the module docstring).

    Parameters
    ----------
    model
        A fitted :class:`velopyro.VeloPyro`.
    adata
        The AnnData with ``obs[labels_key]``.
    labels_key
        ``obs`` column of cell types.
    n_samples
        Posterior draws averaged for the fitted means.
    batch_size
        Cells per batch.
    seed
        Seed of the permutations and the draws.
    fit_fn
        ``fit_fn(data, cells) -> (fit_u, fit_s)`` on the kinetic scale; default the posterior mean fit
        with the states weighted by ``p(k | data)``.
    max_cells
        Score at most this many cells per type (a seeded random subset of larger types; None: all).

    Returns
    -------
    pandas.DataFrame
        Genes x cell types t-statistics (NaN for a type with fewer than 2 cells).
    """
    lab = _labels(adata, labels_key, model.n_cells)
    rng = np.random.default_rng(seed)
    d = model.data
    u_k, s_k = model._kinetic
    fit_fn = fit_fn or _default_fit(model, n_samples, batch_size, seed)
    out = pd.DataFrame(np.nan, index=list(adata.var_names), columns=list(lab.categories))
    for ct in lab.categories:
        cells = np.flatnonzero(np.asarray(lab == ct))
        if len(cells) < 2:
            continue
        if max_cells is not None and len(cells) > max_cells:
            cells = np.sort(rng.choice(cells, max_cells, replace=False))
        # permute u and s independently, per gene, among the type's cells
        pu = np.argsort(rng.random((len(cells), model.n_genes)), axis=0)
        ps = np.argsort(rng.random((len(cells), model.n_genes)), axis=0)
        cols = np.arange(model.n_genes)[None, :]
        u_t, s_t = d.u[cells].numpy(), d.s[cells].numpy()
        codes = None if d.batch_index is None else d.batch_index[cells]
        perm = VeloData(torch.from_numpy(np.ascontiguousarray(u_t[pu, cols])),
                        torch.from_numpy(np.ascontiguousarray(s_t[ps, cols])),
                        d.size_factor_u[cells], d.size_factor_s[cells], codes)
        real = VeloData(torch.from_numpy(u_t), torch.from_numpy(s_t), d.size_factor_u[cells], d.size_factor_s[cells],
                        codes)
        errs = []
        for data, uu, ss in ((perm, u_k[cells][pu, cols], s_k[cells][ps, cols]), (real, u_k[cells], s_k[cells])):
            fu, fs = fit_fn(data, cells)
            errs.append(np.abs(fs - ss) + np.abs(fu - uu))
        with np.errstate(all="ignore"):
            out[ct] = ttest_ind(errs[0], errs[1], axis=0).statistic
    return out


def _default_fit(model: Any, n_samples: int, batch_size: int, seed: int):
    def fit(data: VeloData, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def fn(smp):
            w = posterior.state_weights(smp, posterior.TIME_WEIGHTS)
            return {"u": (smp["u_bar"] * w).sum(-1), "s": (smp["s_bar"] * w).sum(-1)}

        with seeded(seed):
            r = posterior.reduce_samples(fn, model.model, model.guide, data, n_samples=n_samples,
                                         batch_size=batch_size, device=model.device)
        return r["u"], r["s"]

    return fit
