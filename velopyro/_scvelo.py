"""The per-gene keys scVelo's dynamical-model tools read, computed honestly from velopyro's fit.

scVelo 0.3.4's ``latent_time`` filters genes by ``var["fit_likelihood"]``; ``rank_dynamical_genes`` and
``differential_kinetic_test`` rescore the kinetics with ``var["fit_std_u"]``, ``var["fit_std_s"]``,
``var["fit_u0"]``, ``var["fit_s0"]``, ``layers["fit_tau"]``, ``layers["fit_tau_"]`` and
``uns["recover_dynamics"]``. Their meaning in scVelo (Bergen et al., Nat Biotechnol 2020) and what
velopyro writes:

- ``fit_std_u``, ``fit_std_s``: the standard deviation of the gene's unspliced / spliced values over the
  cells where both are positive and below their 99th percentile (scVelo's weights); residuals are divided
  by them before u and s are combined.
- ``fit_likelihood``: scVelo's gene likelihood ``exp(-mean(d^2) / (2 var) - log(2 pi var) / 2)`` of the
  standardised residual distance ``d^2 = ((u - u_fit) / std_u)^2 + ((s - s_fit) / std_s)^2`` with
  ``var`` its signed variance, evaluated on velopyro's posterior mean fit over all cells (scVelo uses its
  own fit and its upper-quantile cells). It lies on scVelo's scale, so ``min_likelihood=0.1`` keeps its
  meaning.
- ``fit_u0``, ``fit_s0``: basal transcription, 0 (the model has none).

Also here, for CellRank: ``layers["velocity_var"]``, the posterior variance of each cell's and gene's
velocity over the draws (:func:`velocity_variance`). CellRank 2's ``VelocityKernel`` Monte Carlo model
samples each cell's velocity from a normal with a mean and a variance; by itself it takes both from the
velocity's moments over the cell's kNN neighbours (scVelo's ``get_moments``), and it reads no variance layer.
:func:`velopyro.tl.cellrank_velocity_kernel` hands it the posterior mean and this variance instead.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._chunks import gene_slices

__all__ = ["standardised_fit_stats", "velocity_variance", "RECOVER_DYNAMICS", "data_std", "residual_sums",
           "fit_likelihood"]

#: ``uns["recover_dynamics"]`` as scVelo's ``recover_dynamics`` writes it (read by ``get_divergence``).
RECOVER_DYNAMICS = {"fit_connected_states": False, "fit_basal_transcription": False, "use_raw": False}


def _scvelo_std(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per-column std over the rows where ``ok`` (all rows where fewer than 3); 1 where it is 0."""
    n_ok = ok.sum(0)
    ok = np.where(n_ok >= 3, ok, True)
    cnt = ok.sum(0)
    mean = np.where(ok, x, 0.0).sum(0) / cnt
    var = np.where(ok, (x - mean) ** 2, 0.0).sum(0) / cnt
    std = np.sqrt(var)
    return np.where(std > 0, std, 1.0)


def data_std(u: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scVelo's ``fit_std_u`` and ``fit_std_s`` of the observations (see the module docstring).

    Parameters
    ----------
    u, s
        Observed unspliced / spliced on the kinetic scale, ``(cells, genes)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(std_u, std_s)``, each ``(genes,)`` float64.
    """
    n, g = u.shape
    std_u, std_s = np.zeros(g), np.zeros(g)
    for sl in gene_slices(n, g):
        uu, ss = np.asarray(u[:, sl], np.float64), np.asarray(s[:, sl], np.float64)
        ok = (uu > 0) & (ss > 0)
        pos_u, pos_s = np.where(ok, uu, np.nan), np.where(ok, ss, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes with no positive cell: all cells
            ub_u, ub_s = np.nanpercentile(pos_u, 99, axis=0), np.nanpercentile(pos_s, 99, axis=0)
        ok &= (uu <= np.nan_to_num(ub_u, nan=np.inf)) & (ss <= np.nan_to_num(ub_s, nan=np.inf))
        std_u[sl], std_s[sl] = _scvelo_std(uu, ok), _scvelo_std(ss, ok)
    return std_u, std_s


def residual_sums(u: np.ndarray, s: np.ndarray, fit_u: np.ndarray, fit_s: np.ndarray, std_u: np.ndarray,
                  std_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene sums over cells of ``d^2`` and ``sign(ds) d`` (``fit_likelihood``'s moments), for streaming.

    Parameters
    ----------
    u, s, fit_u, fit_s
        Observations and fit on the kinetic scale for some cells, ``(cells, genes)``.
    std_u, std_s
        From :func:`data_std` over all cells.

    Returns
    -------
    tuple of numpy.ndarray
        ``(sum_d2, sum_signed_d)``, each ``(genes,)`` float64.
    """
    du = (np.asarray(fit_u, np.float64) - np.asarray(u, np.float64)) / std_u
    ds = (np.asarray(fit_s, np.float64) - np.asarray(s, np.float64)) / std_s
    d2 = du**2 + ds**2
    return d2.sum(0), (np.sign(ds) * np.sqrt(d2)).sum(0)


def fit_likelihood(sum_d2: np.ndarray, sum_signed_d: np.ndarray, n_cells: int) -> np.ndarray:
    """scVelo's ``fit_likelihood`` from the sums of :func:`residual_sums` over all cells.

    Parameters
    ----------
    sum_d2, sum_signed_d
        Per-gene sums.
    n_cells
        Number of cells summed.

    Returns
    -------
    numpy.ndarray
        ``(genes,)`` float64.
    """
    m2, m1 = sum_d2 / n_cells, sum_signed_d / n_cells
    varx = m2 - m1**2
    varx = np.where(varx > 0, varx, 1.0)
    return np.exp(-0.5 * m2 / varx - 0.5 * np.log(2 * np.pi * varx))


def standardised_fit_stats(u: np.ndarray, s: np.ndarray, fit_u: np.ndarray,
                           fit_s: np.ndarray) -> dict[str, np.ndarray]:
    """scVelo's ``fit_std_u``, ``fit_std_s`` and ``fit_likelihood`` for velopyro's fitted means.

    Parameters
    ----------
    u, s
        Observed unspliced / spliced on the kinetic scale, ``(cells, genes)``.
    fit_u, fit_s
        The posterior mean fit (:meth:`velopyro.VeloPyro.get_expression_fit`), same shape.

    Returns
    -------
    dict of str to numpy.ndarray
        ``std_u``, ``std_s``, ``likelihood``, each ``(genes,)`` float64 (see the module docstring).
    """
    n, g = u.shape
    std_u, std_s = data_std(u, s)
    sum_d2, sum_sd = np.zeros(g), np.zeros(g)
    for sl in gene_slices(n, g):
        sum_d2[sl], sum_sd[sl] = residual_sums(u[:, sl], s[:, sl], fit_u[:, sl], fit_s[:, sl], std_u[sl],
                                               std_s[sl])
    return {"std_u": std_u, "std_s": std_s, "likelihood": fit_likelihood(sum_d2, sum_sd, n)}


def velocity_variance(mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    """Posterior variance ``E[v^2] - E[v]^2`` from the draws' mean and mean square, clipped at 0 (rounding).

    Parameters
    ----------
    mean, mean_sq
        The mean of the velocity and of its square over the posterior draws, ``(cells, genes)``.

    Returns
    -------
    numpy.ndarray
        ``(cells, genes)`` float32, >= 0.
    """
    mean = np.asarray(mean, np.float64)
    return np.maximum(np.asarray(mean_sq, np.float64) - mean * mean, 0.0).astype(np.float32)
