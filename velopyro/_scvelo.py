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

__all__ = ["standardised_fit_stats", "velocity_variance", "RECOVER_DYNAMICS"]

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
    out = {k: np.zeros(g) for k in ("std_u", "std_s", "likelihood")}
    for sl in gene_slices(n, g):
        uu, ss = np.asarray(u[:, sl], np.float64), np.asarray(s[:, sl], np.float64)
        ok = (uu > 0) & (ss > 0)
        pos_u, pos_s = np.where(ok, uu, np.nan), np.where(ok, ss, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes with no positive cell: all cells
            ub_u, ub_s = np.nanpercentile(pos_u, 99, axis=0), np.nanpercentile(pos_s, 99, axis=0)
        ok &= (uu <= np.nan_to_num(ub_u, nan=np.inf)) & (ss <= np.nan_to_num(ub_s, nan=np.inf))
        std_u, std_s = _scvelo_std(uu, ok), _scvelo_std(ss, ok)
        du = (np.asarray(fit_u[:, sl], np.float64) - uu) / std_u
        ds = (np.asarray(fit_s[:, sl], np.float64) - ss) / std_s
        d2 = du**2 + ds**2
        varx = d2.mean(0) - (np.sign(ds) * np.sqrt(d2)).mean(0) ** 2
        varx = np.where(varx > 0, varx, 1.0)
        ll = -0.5 * d2.mean(0) / varx - 0.5 * np.log(2 * np.pi * varx)
        out["std_u"][sl], out["std_s"][sl], out["likelihood"][sl] = std_u, std_s, np.exp(ll)
    return out



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
