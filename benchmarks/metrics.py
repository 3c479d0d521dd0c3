"""Metrics shared by both models: numpy/scipy on plain arrays, plus scVelo for the velocity embedding.

Every function takes model outputs as arrays, so both models are scored by the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import logsumexp
from scipy.stats import pearsonr, spearmanr

# state order used by both models: induction, induction steady, repression, repression steady
STATE_NAMES = ("induction", "induction_steady", "repression", "repression_steady")
# noise multiplier per state (the repression steady state is 10x tighter, as in veloVI)
STATE_SCALE = (1.0, 1.0, 1.0, 0.1)

PANCREAS_TRANSITIONS = (
    ("Ductal", "Ngn3 low EP"),
    ("Ngn3 low EP", "Ngn3 high EP"),
    ("Ngn3 high EP", "Pre-endocrine"),
    ("Pre-endocrine", "Alpha"),
    ("Pre-endocrine", "Beta"),
    ("Pre-endocrine", "Delta"),
    ("Pre-endocrine", "Epsilon"),
)

_LOG_2PI = np.log(2.0 * np.pi)

# ---------------------------------------------------------------------------------------------------
# held-out fit
# ---------------------------------------------------------------------------------------------------


def _state_sigma(sigma: np.ndarray, state_scale: Sequence[float]) -> np.ndarray:
    """Per-gene std (genes,) -> (genes, 4) with the state multipliers; full arrays pass through."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim == 1:
        return sigma[:, None] * np.asarray(state_scale, dtype=np.float64)[None, :]
    return sigma


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (x - mean) / sd
    return -0.5 * z * z - np.log(sd) - 0.5 * _LOG_2PI


def mixture_loglik(
    u: np.ndarray,
    s: np.ndarray,
    mean_u: np.ndarray,
    mean_s: np.ndarray,
    pi: np.ndarray,
    sigma_u: np.ndarray,
    sigma_s: np.ndarray,
    state_scale: Sequence[float] = STATE_SCALE,
) -> np.ndarray:
    """Per-cell log-likelihood of the veloVI objective's observation model.

    Returns, for each cell,
    ``sum_g [log sum_k pi_k N(u | mean_u_k, c_k sigma_u) + log sum_k pi_k N(s | mean_s_k, c_k sigma_s)]``,
    with ``u, s`` (cells, genes), means and ``pi`` (cells, genes, 4), and ``sigma_*`` either per gene
    (genes,), multiplied by ``state_scale``, or already per state (broadcastable to (cells, genes, 4)).
    """
    u = np.asarray(u, dtype=np.float64)[..., None]
    s = np.asarray(s, dtype=np.float64)[..., None]
    log_pi = np.log(np.clip(np.asarray(pi, dtype=np.float64), 1e-30, None))
    su = _state_sigma(sigma_u, state_scale)
    ss = _state_sigma(sigma_s, state_scale)
    lu = logsumexp(log_pi + _log_normal(u, np.asarray(mean_u, np.float64), su), axis=-1)
    ls = logsumexp(log_pi + _log_normal(s, np.asarray(mean_s, np.float64), ss), axis=-1)
    return (lu + ls).sum(axis=-1)


def heldout_loglik(draws: Iterable[dict], u: np.ndarray, s: np.ndarray) -> dict:
    """Average :func:`mixture_loglik` over posterior draws (the expected log-likelihood per cell).

    Each draw is a dict with ``mean_u, mean_s, pi`` (cells, genes, 4) and ``sigma_u, sigma_s``.
    Returns the mean over cells and the per-cell values.
    """
    per_draw = [mixture_loglik(u, s, d["mean_u"], d["mean_s"], d["pi"], d["sigma_u"], d["sigma_s"]) for d in draws]
    per_cell = np.mean(per_draw, axis=0)
    return {"mean_per_cell": float(per_cell.mean()), "n_cells": int(per_cell.size), "per_cell": per_cell}


# ---------------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def latent_time_scores(latent_time: np.ndarray, true_time: np.ndarray, true_cell_time: np.ndarray) -> dict:
    """Spearman correlation of model time with true time.

    ``gene_median``: median over genes of the per-gene Spearman (cells ranked by each gene's time).
    ``cell``: Spearman of the cell's mean model time over genes (each gene's time first rescaled to
    [0, 1] by its maximum, so no gene dominates) with the true cell time.
    """
    lt = np.asarray(latent_time, dtype=np.float64)
    tt = np.asarray(true_time, dtype=np.float64)
    per_gene = np.array([_spearman(lt[:, g], tt[:, g]) for g in range(lt.shape[1])])
    gmax = lt.max(axis=0)
    cell_time = (lt / np.where(gmax > 0, gmax, 1.0)).mean(axis=1)
    return {
        "gene_median": float(np.nanmedian(per_gene)),
        "gene_mean": float(np.nanmean(per_gene)),
        "cell": _spearman(cell_time, np.asarray(true_cell_time, dtype=np.float64)),
        "per_gene": per_gene,
    }


def state_accuracy(state_probs: np.ndarray, true_state: np.ndarray) -> dict:
    """Accuracy of the most probable state (4 classes) and of induction vs repression (2 classes)."""
    pred = np.asarray(state_probs).argmax(axis=-1)
    true_state = np.asarray(true_state)
    return {
        "four_state": float((pred == true_state).mean()),
        "induction_vs_repression": float(((pred >= 2) == (true_state >= 2)).mean()),
        "predicted_fractions": np.bincount(pred.ravel(), minlength=4) / pred.size,
        "true_fractions": np.bincount(true_state.ravel(), minlength=4) / true_state.size,
    }


def rate_ratio_scores(beta: np.ndarray, gamma: np.ndarray, true_ratio: np.ndarray) -> dict:
    """Correlation of the fitted gamma / beta with the true ratio (log scale for Pearson)."""
    fit = np.log(np.asarray(gamma, np.float64) / np.asarray(beta, np.float64))
    true = np.log(np.asarray(true_ratio, np.float64))
    ok = np.isfinite(fit) & np.isfinite(true)
    return {
        "spearman": _spearman(fit[ok], true[ok]),
        "pearson_log": float(pearsonr(fit[ok], true[ok]).statistic) if ok.sum() > 2 else float("nan"),
    }


def velocity_sign_accuracy(velocity: np.ndarray, true_velocity: np.ndarray, rel_tol: float = 0.05) -> dict:
    """Fraction of (cell, gene) entries where the velocity sign matches the truth.

    Entries whose true |velocity| is below ``rel_tol`` times the gene's largest true |velocity| (near a
    steady state, where the sign is meaningless) are left out. Also returns the median per-gene Pearson
    correlation of velocity with the truth.
    """
    v = np.asarray(velocity, np.float64)
    tv = np.asarray(true_velocity, np.float64)
    scale = np.abs(tv).max(axis=0, keepdims=True)
    keep = np.abs(tv) > rel_tol * np.where(scale > 0, scale, np.inf)
    corr = []
    for g in range(v.shape[1]):
        if np.ptp(v[:, g]) > 0 and np.ptp(tv[:, g]) > 0:
            corr.append(pearsonr(v[:, g], tv[:, g]).statistic)
    return {
        "sign_accuracy": float((np.sign(v[keep]) == np.sign(tv[keep])).mean()),
        "fraction_scored": float(keep.mean()),
        "gene_pearson_median": float(np.median(corr)) if corr else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------
# real-data direction (CBDir, ICVCoh) on one shared embedding
# ---------------------------------------------------------------------------------------------------


def tutorial_velocity(velocity: np.ndarray, latent_time: np.ndarray, t_max: float = 20.0) -> np.ndarray:
    """Velocity rescaled per gene as in the veloVI tutorial: divided by ``t_max / max_cells(time)``."""
    gmax = np.asarray(latent_time, np.float64).max(axis=0)
    scaling = t_max / np.where(gmax > 0, gmax, t_max)
    return (np.asarray(velocity, np.float64) / scaling[None, :]).astype(np.float32)


def velocity_embedding(adata, velocity: np.ndarray, vkey: str, basis: str = "umap",
                       genes: np.ndarray | None = None) -> np.ndarray:
    """Project a velocity layer onto ``obsm['X_' + basis]`` with scVelo's transition graph.

    Works on a light copy of ``adata`` so that every model goes through exactly the same calls. ``genes``
    (a boolean mask) restricts the graph to those genes through scVelo's ``var['<vkey>_genes']``.
    """
    import anndata as ad
    import scvelo as scv

    work = ad.AnnData(
        X=adata.layers["Ms"].copy(),
        obs=adata.obs[[]].copy(),
        var=adata.var[[]].copy(),
        layers={"Ms": adata.layers["Ms"], vkey: np.asarray(velocity, dtype=np.float32)},
        obsm={f"X_{basis}": adata.obsm[f"X_{basis}"]},
        obsp={k: adata.obsp[k] for k in ("distances", "connectivities")},
        uns={"neighbors": adata.uns["neighbors"]},
    )
    if genes is not None:
        work.var[f"{vkey}_genes"] = np.asarray(genes, dtype=bool)
    scv.tl.velocity_graph(work, vkey=vkey, xkey="Ms", n_jobs=1, show_progress_bar=False)
    scv.tl.velocity_embedding(work, basis=basis, vkey=vkey)
    return np.asarray(work.obsm[f"{vkey}_{basis}"])


def knn_lists(adata) -> list[np.ndarray]:
    """Neighbour indices per cell from the kNN graph in ``adata.obsp['distances']`` (self excluded)."""
    d = adata.obsp["distances"].tocsr()
    return [d.indices[d.indptr[i] : d.indptr[i + 1]] for i in range(d.shape[0])]


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between vector ``a`` and each row of ``b`` (0 where a norm vanishes)."""
    na = np.linalg.norm(a)
    nb = np.linalg.norm(b, axis=1)
    den = na * nb
    return np.divide(b @ a, den, out=np.zeros_like(nb), where=den > 0)


def cross_boundary_correctness(
    labels: np.ndarray,
    embedding: np.ndarray,
    velocity_emb: np.ndarray,
    neighbors: list[np.ndarray],
    transitions: Sequence[tuple[str, str]] = PANCREAS_TRANSITIONS,
) -> dict:
    """Cross-boundary direction correctness (CBDir, as in the UniTVelo / veloVI evaluations).

    For each transition A -> B: each cell of A with kNN neighbours in B scores the mean cosine between
    its embedded velocity and the displacements to those B neighbours; the transition's score is the
    mean over such cells. ``mean`` averages the transitions.
    """
    labels = np.asarray(labels).astype(str)
    per = {}
    for a, b in transitions:
        scores = []
        for i in np.flatnonzero(labels == a):
            nb = neighbors[i][labels[neighbors[i]] == b]
            if nb.size == 0:
                continue
            scores.append(_cosine_rows(velocity_emb[i], embedding[nb] - embedding[i]).mean())
        per[f"{a} -> {b}"] = float(np.mean(scores)) if scores else float("nan")
    return {"mean": float(np.nanmean(list(per.values()))), "per_transition": per}


def inner_cluster_coherence(labels: np.ndarray, velocity: np.ndarray, neighbors: list[np.ndarray]) -> dict:
    """In-cluster velocity coherence (ICVCoh): mean cosine between a cell's gene-space velocity and its
    same-cluster kNN neighbours' velocities; averaged over cells per cluster, then over clusters."""
    labels = np.asarray(labels).astype(str)
    v = np.asarray(velocity, np.float64)
    per = {}
    for c in np.unique(labels):
        scores = []
        for i in np.flatnonzero(labels == c):
            nb = neighbors[i][labels[neighbors[i]] == c]
            if nb.size:
                scores.append(_cosine_rows(v[i], v[nb]).mean())
        per[c] = float(np.mean(scores)) if scores else float("nan")
    return {"mean": float(np.nanmean(list(per.values()))), "per_cluster": per}


def direction_scores(adata, velocity: np.ndarray, latent_time: np.ndarray, vkey: str, cluster_key="clusters",
                     genes: np.ndarray | None = None):
    """CBDir and ICVCoh for one model on the shared pancreas UMAP; returns scores and embedded velocity.

    ``genes`` (boolean mask) restricts both to those genes (the velocity graph through scVelo's
    ``var['<vkey>_genes']``; ICVCoh on the kept genes' velocity)."""
    v = tutorial_velocity(velocity, latent_time)
    emb = velocity_embedding(adata, v, vkey, genes=genes)
    if genes is not None:
        v = v[:, np.asarray(genes, dtype=bool)]
    nbrs = knn_lists(adata)
    labels = adata.obs[cluster_key].to_numpy()
    return {
        "cbdir": cross_boundary_correctness(labels, adata.obsm["X_umap"], emb, nbrs),
        "icvcoh": inner_cluster_coherence(labels, v, nbrs),
        "velocity_umap": emb,
        "velocity": v,
    }
