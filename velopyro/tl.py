"""Tools on a fitted AnnData, without scVelo: velocity graph, transitions, embedding, confidence.

The functions follow scVelo's recipe (``scv.tl.velocity_graph`` / ``scv.tl.velocity_embedding``),
written with numpy and scipy only and vectorised over the edges of the kNN graph:

1. :func:`velocity_graph`: for each cell ``i`` and each neighbour ``j`` in the kNN graph
   (``obsp["connectivities"]`` by default, as written by :func:`velopyro.pp.preprocess`), the Pearson
   ("cosine") correlation between the gene-space velocity ``v_i`` and the displacement
   ``x_j - x_i`` (``x`` = ``layers["Ms"]``), over the velocity genes;
2. :func:`transition_matrix`: ``p_ij = softmax_j(corr_ij / sigma)`` restricted to the neighbours
   (``sigma = 0.1``, i.e. scVelo's ``exp(10 corr)`` weighting);
3. :func:`velocity_embedding`: ``V_i = sum_j p_ij d_ij - mean_j d_ij`` with the unit displacements
   ``d_ij = (e_j - e_i) / ||e_j - e_i||`` in the embedding ``obsm["X_<basis>"]`` (the expected
   direction of movement minus what a uniform walk over the neighbours would give).

Keys written
------------

=====================================  ============================================================
key                                    content
=====================================  ============================================================
``obsp["<vkey>_graph"]``               CSR, positive part of the correlation of velocity and displacement
                                       per kNN edge (scVelo's layout; also in ``uns``)
``obsp["<vkey>_graph_neg"]``           CSR, the negative correlations (negative values; also in ``uns``)
``uns["<vkey>_graph_params"]``         the settings of :func:`velocity_graph` (xkey, graph, genes)
``obsm["<vkey>_<basis>"]``             velocity projected into the embedding (e.g. ``velocity_umap``)
``obs["<vkey>_length"]``               Euclidean norm of the gene-space velocity per cell
``obs["<vkey>_confidence"]``           mean correlation of a cell's velocity with its neighbours'
=====================================  ============================================================

Zero-length displacements (duplicate cells) and zero velocities give zero correlation; nothing
produces NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validation import VelopyroInputError, get_layer

__all__ = [
    "velocity_graph",
    "signed_velocity_graph",
    "transition_matrix",
    "velocity_embedding",
    "velocity_confidence",
    "gene_fit_r2",
    "gene_time_consistency",
    "cellrank_velocity_kernel",
]

# Edges processed per chunk: bounds memory at chunk x genes floats.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _dense(x: Any) -> np.ndarray:
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.asarray(x, dtype=np.float64)


def _gene_mask(adata: Any, vkey: str, v: np.ndarray) -> np.ndarray:
    """Velocity genes (``var["velocity_genes"]`` if present) with finite, non-constant velocity."""
    mask = np.all(np.isfinite(v), axis=0)
    if "velocity_genes" in adata.var:
        mask &= np.asarray(adata.var["velocity_genes"], dtype=bool)
    if not mask.any():
        raise VelopyroInputError(
            f"no gene has a finite velocity in layers[{vkey!r}] (among var['velocity_genes']); "
            "check the fit"
        )
    return mask


def _default_xkey(adata: Any) -> str:
    if "Ms" in adata.layers:
        return "Ms"
    cfg = adata.uns.get("velopyro", {}).get("config", {}) if hasattr(adata, "uns") else {}
    key = cfg.get("spliced_layer")
    if key is not None and (key == "X" or key in adata.layers):
        return str(key)
    raise VelopyroInputError(
        "layers['Ms'] not found; run velopyro.pp.preprocess(adata) first or pass xkey= the spliced layer "
        "the velocity refers to"
    )


def _graph(adata: Any, graph_key: str, n_neighbors: int | None) -> sp.csr_matrix:
    """The kNN graph as CSR without the diagonal, optionally cut to the ``n_neighbors`` strongest edges.

    For ``graph_key="distances"`` (or any key containing "dist") the nearest are the strongest.
    """
    if graph_key not in adata.obsp:
        avail = list(adata.obsp.keys())
        raise VelopyroInputError(
            f"obsp[{graph_key!r}] not found (available: {avail or 'none'}); run velopyro.pp.preprocess "
            "(or scanpy.pp.neighbors) first"
        )
    g = sp.csr_matrix(adata.obsp[graph_key], dtype=np.float64, copy=True)
    if g.shape != (adata.n_obs, adata.n_obs):
        raise VelopyroInputError(f"obsp[{graph_key!r}] has shape {g.shape}, expected {(adata.n_obs,) * 2}")
    g.setdiag(0.0)
    g.eliminate_zeros()
    g.sort_indices()
    if n_neighbors is not None:
        if n_neighbors < 1:
            raise VelopyroInputError(f"n_neighbors must be >= 1, got {n_neighbors}")
        rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
        strength = -g.data if "dist" in graph_key else g.data
        order = np.lexsort((-strength, rows))  # by row, strongest first
        rank = np.arange(len(order)) - g.indptr[rows[order]]
        keep = np.zeros(len(order), dtype=bool)
        keep[order[rank < n_neighbors]] = True
        g = sp.csr_matrix((g.data[keep], g.indices[keep], np.r_[0, np.cumsum(np.bincount(rows[keep],
                          minlength=g.shape[0]))]), shape=g.shape)
    if g.nnz == 0:
        raise VelopyroInputError(f"obsp[{graph_key!r}] has no edges between different cells")
    return g


def _edge_rows(g: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))


def _centre_rows(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=1, keepdims=True)


def _edge_correlation(x: np.ndarray, vc: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``x[cols] - x[rows]`` with the (row-centred) ``vc[rows]`` per edge."""
    n_edges, n_genes = len(rows), x.shape[1]
    v_norm = np.linalg.norm(vc, axis=1)
    out = np.zeros(n_edges)
    step = max(1, _CHUNK_ELEMENTS // max(n_genes, 1))
    for a in range(0, n_edges, step):
        r, c = rows[a:a + step], cols[a:a + step]
        dx = _centre_rows(x[c] - x[r])
        num = np.einsum("ij,ij->i", dx, vc[r])
        den = np.linalg.norm(dx, axis=1) * v_norm[r]
        out[a:a + step] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.clip(out, -1.0, 1.0)


def _split_signed(g: sp.csr_matrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The positive (and ``1e-12`` placeholder) and the negative entries of ``g`` as two CSR matrices."""
    neg_mask = g.data < 0
    pos = sp.csr_matrix((np.where(neg_mask, 0.0, g.data), g.indices.copy(), g.indptr.copy()), shape=g.shape)
    neg = sp.csr_matrix((np.where(neg_mask, g.data, 0.0), g.indices.copy(), g.indptr.copy()), shape=g.shape)
    pos.eliminate_zeros()
    neg.eliminate_zeros()
    return pos, neg


# --------------------------------------------------------------------------------------------------
# public tools
# --------------------------------------------------------------------------------------------------


def signed_velocity_graph(adata: Any, vkey: str = "velocity") -> sp.csr_matrix:
    """The full signed velocity graph: ``obsp["<vkey>_graph"] + obsp["<vkey>_graph_neg"]``.

    :func:`velocity_graph` stores the correlations in scVelo's layout (positive part and negative part
    apart); this puts them back together.

    Parameters
    ----------
    adata
        AnnData after :func:`velocity_graph` (or ``scv.tl.velocity_graph``).
    vkey
        Velocity layer the graph was computed from.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(cells, cells)`` float64, correlations in [-1, 1] on the kNN edges.

    Raises
    ------
    VelopyroInputError
        If the graph is missing.
    """
    key, key_neg = f"{vkey}_graph", f"{vkey}_graph_neg"
    stores = [st for st in (adata.obsp, adata.uns) if key in st]
    if not stores:
        raise VelopyroInputError(f"obsp[{key!r}] not found; run velopyro.tl.velocity_graph(adata, vkey={vkey!r})")
    store = stores[0]
    g = sp.csr_matrix(store[key], dtype=np.float64, copy=True)
    if key_neg in store:
        g = g + sp.csr_matrix(store[key_neg], dtype=np.float64)
    g.sort_indices()
    return g


def velocity_graph(
    adata: Any,
    vkey: str = "velocity",
    xkey: str | None = None,
    graph_key: str = "connectivities",
    n_neighbors: int | None = None,
    copy: bool = False,
) -> Any | None:
    """Correlation of each cell's velocity with the displacements to its kNN neighbours.

    ``corr_ij = pearson(x_j - x_i, v_i)`` over the velocity genes, for every edge ``(i, j)`` of the
    graph (``i != j``), as scVelo's ``velocity_graph`` without the recursive neighbour search.

    Parameters
    ----------
    adata
        AnnData with ``layers[vkey]`` (e.g. after :meth:`velopyro.VeloPyro.write_to_adata`),
        ``layers[xkey]`` and the graph ``obsp[graph_key]``.
    vkey
        Layer with the gene-space velocity (``"velocity"``; ``"velocity_u"`` for du/dt).
    xkey
        Expression layer the velocity refers to; default ``"Ms"`` (else the fitted spliced layer
        recorded in ``uns["velopyro"]["config"]``).
    graph_key
        ``obsp`` key of the kNN graph: ``"connectivities"`` (default) or ``"distances"``.
    n_neighbors
        Keep only the ``n_neighbors`` strongest edges per cell (all edges by default).
    copy
        Work on and return a copy.

    Returns
    -------
    AnnData or None
        The copy if ``copy`` else None. Writes, in scVelo's layout, ``obsp[f"{vkey}_graph"]`` (CSR,
        the positive correlations; exact zeros are stored as ``1e-12`` so the neighbours are kept) and
        ``obsp[f"{vkey}_graph_neg"]`` (the negative correlations, as negative values), the same two
        matrices under ``uns`` (where scVelo 0.3.4's ``transition_matrix``, ``terminal_states`` and
        ``velocity_pseudotime`` look for them), and ``uns[f"{vkey}_graph_params"]``.
        :func:`signed_velocity_graph` adds the two parts back together.

    Raises
    ------
    VelopyroInputError
        If a layer or the graph is missing, or no gene has a finite velocity.
    """
    adata = adata.copy() if copy else adata
    xkey = _default_xkey(adata) if xkey is None else xkey
    v = _dense(get_layer(adata, vkey, what="velocity layer"))
    x = _dense(get_layer(adata, xkey, what="expression layer"))
    genes = _gene_mask(adata, vkey, v)
    x, v = np.nan_to_num(x[:, genes]), v[:, genes]
    g = _graph(adata, graph_key, n_neighbors)
    rows, cols = _edge_rows(g), g.indices
    corr = _edge_correlation(x, _centre_rows(v), rows, cols)
    corr[corr == 0] = 1e-12  # keep the sparsity pattern (neighbours) through eliminate_zeros elsewhere
    pos, neg = _split_signed(sp.csr_matrix((corr, cols.copy(), g.indptr.copy()), shape=g.shape))
    # scVelo's layout: the positive part under "<vkey>_graph", the negative part (negative values) under
    # "<vkey>_graph_neg"; scVelo 0.3.4 requires the uns keys and reads the positive part from obsp first
    for store in (adata.obsp, adata.uns):
        store[f"{vkey}_graph"] = pos
        store[f"{vkey}_graph_neg"] = neg
    adata.uns[f"{vkey}_graph_params"] = {"xkey": xkey, "graph_key": graph_key,
                                         "n_neighbors": -1 if n_neighbors is None else int(n_neighbors),
                                         "n_genes": int(genes.sum())}
    return adata if copy else None


def transition_matrix(
    adata: Any,
    vkey: str = "velocity",
    sigma: float = 0.1,
    self_transitions: bool = False,
) -> sp.csr_matrix:
    """Row-stochastic transition probabilities from the velocity graph.

    ``p_ij = exp(corr_ij / sigma) / sum_k exp(corr_ik / sigma)`` over the neighbours ``k`` of ``i``
    (a softmax; scVelo's kernel ``exp(corr / sigma)`` with its default ``sigma = 1/10``).

    Parameters
    ----------
    adata
        AnnData with ``obsp[f"{vkey}_graph"]`` (computed by :func:`velocity_graph` if missing).
    vkey
        Velocity layer.
    sigma
        Kernel width; smaller is more peaked (must be > 0).
    self_transitions
        Give each cell a self-edge with correlation 0 (the probability of staying).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(cells, cells)``, rows summing to one.
    """
    if not sigma > 0:
        raise VelopyroInputError(f"sigma must be positive, got {sigma}")
    key = f"{vkey}_graph"
    if key not in adata.obsp:
        velocity_graph(adata, vkey=vkey)
    g = signed_velocity_graph(adata, vkey)
    if self_transitions:
        g = g + sp.identity(g.shape[0], format="csr") * 1e-12
        g.sort_indices()
    rows = _edge_rows(g)
    logits = g.data / sigma
    row_max = np.full(g.shape[0], -np.inf)
    np.maximum.at(row_max, rows, logits)
    w = np.exp(logits - row_max[rows])
    tot = np.bincount(rows, weights=w, minlength=g.shape[0])
    return sp.csr_matrix((w / tot[rows], g.indices.copy(), g.indptr.copy()), shape=g.shape)


def velocity_embedding(
    adata: Any,
    basis: str = "umap",
    vkey: str = "velocity",
    n_neighbors: int | None = None,
    copy: bool = False,
    *,
    sigma: float = 0.1,
    xkey: str | None = None,
    graph_key: str = "connectivities",
) -> Any | None:
    """Project gene-space velocity into an embedding through the kNN transition probabilities.

    ``V_i = sum_j p_ij d_ij - (1 / k_i) sum_j d_ij`` with ``d_ij = (e_j - e_i) / ||e_j - e_i||``, the
    unit displacement in the embedding, ``p_ij`` from :func:`transition_matrix` and ``k_i`` the
    number of neighbours (scVelo's ``velocity_embedding``). The velocity graph is (re)computed here,
    so the result always matches the current ``layers[vkey]``.

    Parameters
    ----------
    adata
        AnnData with ``layers[vkey]``, ``layers["Ms"]``, ``obsp["connectivities"]`` and
        ``obsm[f"X_{basis}"]``.
    basis
        Embedding name: reads ``obsm[f"X_{basis}"]`` (e.g. ``"umap"``, ``"pca"``; the first two
        coordinates are used for bases with more dimensions).
    vkey
        Velocity layer.
    n_neighbors
        Use only the ``n_neighbors`` strongest graph edges per cell (default: all).
    copy
        Work on and return a copy.
    sigma
        Kernel width of the transition probabilities (0.1).
    xkey
        Expression layer for the displacements (default ``"Ms"``).
    graph_key
        ``obsp`` key of the kNN graph.

    Returns
    -------
    AnnData or None
        The copy if ``copy`` else None. Writes ``obsm[f"{vkey}_{basis}"]`` (cells x 2), plus what
        :func:`velocity_graph` writes.

    Raises
    ------
    VelopyroInputError
        If the embedding, a layer or the graph is missing.

    Examples
    --------
    >>> import scanpy as sc
    >>> sc.tl.umap(adata, random_state=0)
    >>> velopyro.tl.velocity_embedding(adata, basis="umap")
    >>> adata.obsm["velocity_umap"].shape
    (3696, 2)
    """
    adata = adata.copy() if copy else adata
    ekey = f"X_{basis}"
    if ekey not in adata.obsm:
        raise VelopyroInputError(
            f"obsm[{ekey!r}] not found (available: {list(adata.obsm.keys()) or 'none'}); compute the "
            f"embedding first, e.g. scanpy.tl.umap(adata) for basis='umap'"
        )
    emb = np.asarray(adata.obsm[ekey], dtype=np.float64)[:, :2]
    velocity_graph(adata, vkey=vkey, xkey=xkey, graph_key=graph_key, n_neighbors=n_neighbors)
    t = transition_matrix(adata, vkey=vkey, sigma=sigma)
    rows, cols = _edge_rows(t), t.indices
    d = emb[cols] - emb[rows]
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    d = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)
    k = np.maximum(np.diff(t.indptr), 1)
    weights = t.data - 1.0 / k[rows]
    v_emb = np.zeros_like(emb)
    np.add.at(v_emb, rows, weights[:, None] * d)
    adata.obsm[f"{vkey}_{basis}"] = v_emb.astype(np.float32)
    return adata if copy else None


def velocity_confidence(adata: Any, vkey: str = "velocity", graph_key: str = "connectivities",
                        copy: bool = False) -> Any | None:
    """Velocity length and coherence with the neighbours (scVelo's ``velocity_confidence``, lite).

    The confidence of cell ``i`` is the mean over its kNN neighbours ``j`` of the Pearson correlation
    of ``v_i`` and ``v_j`` over the velocity genes: near 1 where velocities agree locally.

    Parameters
    ----------
    adata
        AnnData with ``layers[vkey]`` and ``obsp[graph_key]``.
    vkey
        Velocity layer.
    graph_key
        ``obsp`` key of the kNN graph.
    copy
        Work on and return a copy.

    Returns
    -------
    AnnData or None
        The copy if ``copy`` else None. Writes ``obs[f"{vkey}_length"]`` (``||v_i||``) and
        ``obs[f"{vkey}_confidence"]`` (in [-1, 1]).
    """
    adata = adata.copy() if copy else adata
    v = _dense(get_layer(adata, vkey, what="velocity layer"))
    v = v[:, _gene_mask(adata, vkey, v)]
    g = _graph(adata, graph_key, None)
    rows, cols = _edge_rows(g), g.indices
    vc = _centre_rows(v)
    norm = np.linalg.norm(vc, axis=1)
    num = np.zeros(len(rows))
    step = max(1, _CHUNK_ELEMENTS // max(v.shape[1], 1))
    for a in range(0, len(rows), step):
        num[a:a + step] = np.einsum("ij,ij->i", vc[rows[a:a + step]], vc[cols[a:a + step]])
    den = norm[rows] * norm[cols]
    corr = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    k = np.maximum(np.diff(g.indptr), 1)
    adata.obs[f"{vkey}_length"] = np.linalg.norm(v, axis=1).astype(np.float32)
    adata.obs[f"{vkey}_confidence"] = (np.bincount(rows, weights=corr, minlength=adata.n_obs) / k).astype(
        np.float32)
    return adata if copy else None


def gene_fit_r2(adata: Any) -> np.ndarray:
    """Per-gene R^2 of the fitted kinetics against the data in the phase portrait (higher is better).

    For every cell, the fitted mean is the kinetic trajectory at ``layers["fit_t"]`` for the transient
    states and the kinetics' steady states (``(alpha/beta, alpha/gamma)`` and ``(0, 0)`` for the constant
    kinetics; :mod:`velopyro.kinetics`) for the steady-state cells (state from ``layers["fit_state"]``); the R^2 is
    ``1 - SSE / SST`` over unspliced and spliced together, each modality scaled by its variance, on
    the scale drawn by :func:`velopyro.pl.phase_portraits`. :func:`velopyro.pl.phase_portraits` shows
    the genes with the highest value by default.

    Parameters
    ----------
    adata
        AnnData after :meth:`velopyro.VeloPyro.write_to_adata`.

    Returns
    -------
    numpy.ndarray
        ``(genes,)``; ``-inf`` for genes with NaN parameters.
    """
    from ._phase import _phase_data

    obs_u, obs_s, fit_u, fit_s = _phase_data(adata, np.arange(adata.n_vars))
    out = np.zeros(adata.n_vars)
    for obs, fit in ((obs_u, fit_u), (obs_s, fit_s)):
        var = obs.var(axis=0)
        sse = ((obs - fit) ** 2).mean(axis=0)
        out += np.divide(sse, var, out=np.full_like(sse, np.inf), where=var > 0)
    r2 = 1.0 - out / 2.0
    return np.where(np.isfinite(r2), r2, -np.inf)


def gene_time_consistency(
    adata: Any,
    threshold: float = 0.0,
    min_cells: int = 20,
    exclude: bool = False,
) -> None:
    """Flag genes fitted backward: a gene's own time runs against the cells' shared latent time.

    The classic failure of RNA velocity is a gene fitted in reverse (its induction read as repression),
    which turns its velocity's sign around. In veloVI each gene's time is a function of the shared latent
    z (eq. 16-19), so a gene's time heads can order the cells in the opposite direction to every
    other gene and still fit its phase portrait equally well: the curve is the same point set traversed
    either way. Its signature is therefore an ordering, not a worse fit. For each gene, this is the
    Spearman correlation between its fitted time ``layers["fit_t"]`` and the cell-level
    ``obs["latent_time"]`` (the median over genes), over the cells in one of the gene's transient states
    (``layers["fit_state"]`` 0 induction or 2 repression; steady-state cells carry no order). A gene
    whose correlation is below ``threshold`` runs backward against the consensus.

    Parameters
    ----------
    adata
        AnnData after :meth:`velopyro.VeloPyro.write_to_adata` (reads ``layers["fit_t"]``,
        ``layers["fit_state"]``, ``obs["latent_time"]``).
    threshold
        Genes with a consistency below it are flagged (0: the gene orders the cells against the consensus).
    min_cells
        Genes with fewer transient cells get NaN and are not flagged.
    exclude
        Also set ``var["velocity_genes"]`` to False for the flagged genes, and for those in
        ``var["fit_orientation_contradicted"]`` (written by :meth:`velopyro.VeloPyro.write_to_adata` after
        ``rate_init="select"``), so that :func:`velocity_graph` (and scVelo's ``scv.tl.velocity_graph``)
        leave them out.

    Returns
    -------
    None
        Writes ``var["fit_time_consistency"]`` (float in [-1, 1], NaN where undefined) and
        ``var["fit_backward"]`` (bool); with ``exclude``, updates ``var["velocity_genes"]``.
    """
    from scipy.stats import rankdata

    for key in ("fit_t", "fit_state"):
        if key not in adata.layers:
            raise VelopyroInputError(f"layers[{key!r}] not found; run model.write_to_adata(adata) first")
    if "latent_time" not in adata.obs:
        raise VelopyroInputError("obs['latent_time'] not found; run model.write_to_adata(adata) first")
    t = _dense(adata.layers["fit_t"])
    state = np.asarray(adata.layers["fit_state"])
    cell_rank = rankdata(np.asarray(adata.obs["latent_time"], dtype=np.float64))
    out = np.full(adata.n_vars, np.nan)
    for g in range(adata.n_vars):
        keep = (state[:, g] == 0) | (state[:, g] == 2)
        if keep.sum() < max(min_cells, 3):
            continue
        a, b = rankdata(t[keep, g]), cell_rank[keep]
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        out[g] = (a * b).sum() / den if den > 0 else np.nan
    backward = np.nan_to_num(out, nan=np.inf) < threshold
    adata.var["fit_time_consistency"] = out
    adata.var["fit_backward"] = backward
    if exclude:
        current = (np.asarray(adata.var["velocity_genes"], dtype=bool) if "velocity_genes" in adata.var
                   else np.ones(adata.n_vars, dtype=bool))
        # a gene whose own held-out data prefer the other start's fit, which reads it the other way round
        # (rate_init="select", VeloPyro.write_to_adata), is left out too
        contradicted = (np.asarray(adata.var["fit_orientation_contradicted"], dtype=bool)
                        if "fit_orientation_contradicted" in adata.var else np.zeros(adata.n_vars, dtype=bool))
        adata.var["velocity_genes"] = current & ~backward & ~contradicted


# --------------------------------------------------------------------------------------------------
# CellRank
# --------------------------------------------------------------------------------------------------


def cellrank_velocity_kernel(adata: Any, vkey: str = "velocity", var_key: str | None = "velocity_var",
                             xkey: str | None = None, backward: bool = False, **kwargs: Any) -> Any:
    """CellRank 2's ``VelocityKernel`` whose Monte Carlo model samples velopyro's posterior.

    CellRank's ``compute_transition_matrix(model="monte_carlo")`` draws each cell's velocity from a normal
    with a mean and a per-gene variance and averages the transition probabilities over the draws. By
    itself it takes both from the velocity's moments over the cell's kNN neighbours; it reads no variance
    layer. This builds the kernel as ``cellrank.kernels.VelocityKernel(adata, xkey=xkey, vkey=vkey)`` would
    and, when ``var_key`` is given, sets the mean to ``layers[vkey]`` itself and the variance to
    ``layers[var_key]`` (the posterior variance :meth:`velopyro.VeloPyro.write_to_adata` writes), on the
    genes the kernel uses. The ``"deterministic"`` model is unaffected (it uses ``layers[vkey]`` only).

    It sets two attributes of CellRank's kernel that are not public API (``_vexp``, ``_vvar``; CellRank
    2.0.x) and fails with a clear error if they are not there.

    Parameters
    ----------
    adata
        AnnData written by :meth:`velopyro.VeloPyro.write_to_adata`, with ``obsp["connectivities"]``.
    vkey
        Velocity layer.
    var_key
        Layer of the velocity's posterior variance; None keeps CellRank's neighbour variance.
    xkey
        Expression layer of the displacements (default: ``"Ms"``, else the fit's spliced layer).
    backward
        Backward process (CellRank uses only its deterministic model then).
    **kwargs
        More keyword arguments of ``VelocityKernel`` (not ``gene_subset`` with ``var_key``: the kernel
        then uses ``var["<vkey>_genes"]``, as CellRank does by default).

    Returns
    -------
    cellrank.kernels.VelocityKernel
        Call ``.compute_transition_matrix(model="monte_carlo", n_samples=..., seed=...)`` on it.

    Examples
    --------
    >>> vk = velopyro.tl.cellrank_velocity_kernel(adata)  # doctest: +SKIP
    >>> vk.compute_transition_matrix(model="monte_carlo", n_samples=100, seed=0)  # doctest: +SKIP
    """
    try:
        import cellrank as cr
    except ImportError as e:
        raise VelopyroInputError("cellrank is not installed; pip install 'velopyro[cellrank]'") from e
    xkey = _default_xkey(adata) if xkey is None else xkey
    for key in (vkey,) + ((var_key,) if var_key is not None else ()):
        if key not in adata.layers:
            raise VelopyroInputError(f"layers[{key!r}] not found; run model.write_to_adata(adata) first")
    vk = cr.kernels.VelocityKernel(adata, backward=backward, xkey=xkey, vkey=vkey, **kwargs)
    if var_key is None:
        return vk
    if kwargs.get("gene_subset") is not None:
        raise VelopyroInputError("gene_subset is not supported with var_key; set var[f'{vkey}_genes'] instead")
    if not (hasattr(vk, "_vexp") and hasattr(vk, "_vvar") and hasattr(vk, "_vdata")):
        raise VelopyroInputError(
            f"cellrank {getattr(cr, '__version__', '?')}'s VelocityKernel has no _vexp/_vvar (written for "
            "CellRank 2.0.x); pass var_key=None to use CellRank's own neighbour variance"
        )
    # the genes the kernel kept: var[f"{vkey}_genes"] (CellRank's default subset), then finite velocity
    genes = np.ones(adata.n_vars, dtype=bool)
    if f"{vkey}_genes" in adata.var:
        genes = np.asarray(adata.var[f"{vkey}_genes"], dtype=bool)
    v = _dense(adata.layers[vkey])[:, genes]
    var = _dense(adata.layers[var_key])[:, genes]
    finite = ~np.isnan(v.sum(0))
    v, var = v[:, finite], var[:, finite]
    if v.shape != np.shape(vk._vdata) or not np.allclose(v, vk._vdata, equal_nan=True):
        raise VelopyroInputError(
            "cellrank_velocity_kernel could not match CellRank's gene subset; pass var_key=None to use "
            "CellRank's own neighbour variance"
        )
    vk._vexp, vk._vvar = v, np.maximum(var, 0.0)
    return vk
