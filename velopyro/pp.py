"""Preprocessing for RNA velocity, scanpy style (``adata`` first, ``copy=False`` modifies in place).

The pipeline the reference (veloVI) expects, written without scVelo::

    filter_and_normalize -> moments -> scale -> select_genes      (= preprocess)

Every function

- takes the AnnData first and ``copy: bool = False``: with ``copy=True`` it returns a new AnnData and
  leaves the caller's object untouched, otherwise it modifies ``adata`` in place and returns ``None``;
- validates its inputs first (missing layers, NaN/inf, negative counts, non-numeric dtypes raise
  :class:`velopyro._validation.VelopyroInputError` before anything is modified); a backed AnnData is
  refused with a message to load it with ``adata.to_memory()``;
- :func:`preprocess` is all or nothing: its steps run on a copy that replaces the contents of ``adata``
  only when every step has succeeded;
- records its parameters and a short summary in ``adata.uns["velopyro_pp"][step]``.

scanpy (the ``preprocessing`` extra) is only needed for PCA and the kNN graph in :func:`moments` and
for ``n_top_genes`` in :func:`filter_and_normalize`; it is imported lazily.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ._validation import (
    VelopyroInputError,
    _constant_columns,
    check_layer_pair,
    check_matrix,
    format_names,
    get_layer,
)
from ._warn import caller_stacklevel

__all__ = ["filter_and_normalize", "moments", "scale", "select_genes", "preprocess"]

UNS_KEY = "velopyro_pp"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _import_scanpy(what: str) -> Any:
    try:
        import scanpy as sc
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"velopyro.pp.{what} needs scanpy; install it with: pip install velopyro[preprocessing]"
        ) from err
    return sc


def _plain(value: Any) -> Any:
    """Make a value writable to .h5ad (tuples -> lists, numpy scalars -> python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _record(adata: AnnData, step: str, params: dict[str, Any]) -> None:
    """Store ``params`` under ``adata.uns["velopyro_pp"][step]`` (later calls overwrite)."""
    log = dict(adata.uns.get(UNS_KEY, {}))
    log[step] = _plain(params)
    adata.uns[UNS_KEY] = log


def _as_array(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def _col_sum(x: Any) -> np.ndarray:
    return np.asarray(x.sum(axis=0)).ravel().astype(np.float64)


def _row_sum(x: Any) -> np.ndarray:
    return np.asarray(x.sum(axis=1)).ravel().astype(np.float64)


def _looks_like_counts(x: Any, n: int = 10_000) -> bool:
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    values = values[:n]
    return bool(np.all(np.abs(values - np.round(values)) < 1e-3))


def _scale_rows(x: Any, factors: np.ndarray) -> Any:
    """Return ``x`` with row i divided by ``factors[i]`` as float32, same (sparse) format, new object."""
    inv = (1.0 / factors).astype(np.float32)
    if sp.issparse(x):
        fmt = x.format
        out = sp.diags(inv) @ sp.csr_matrix(x, dtype=np.float32)
        return out.asformat(fmt).astype(np.float32)
    return np.asarray(x, dtype=np.float32) * inv[:, None]


def _log1p(x: Any) -> Any:
    if sp.issparse(x):
        out = x.copy().astype(np.float32)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float32))


def _subset_genes(adata: AnnData, keep: np.ndarray) -> None:
    """Subset genes of ``adata`` in place (what scanpy does for its in-place filters)."""
    if not keep.all():
        adata._inplace_subset_var(np.asarray(keep, dtype=bool))


def _check_in_memory(adata: Any, what: str) -> None:
    """Raise for a backed AnnData (``read_h5ad(..., backed="r")``): preprocessing rewrites layers and
    subsets genes, which a file-backed object cannot do safely."""
    if getattr(adata, "isbacked", False):
        raise VelopyroInputError(
            f"velopyro.pp.{what} needs an AnnData in memory, got one backed by {adata.filename}; load it "
            "first with adata = adata.to_memory() (the file is not changed)"
        )


def _warn_dropped(names: Sequence[str], why: str) -> None:
    if len(names):
        warnings.warn(
            f"dropping {len(names)} gene(s) {why}: {format_names(names, limit=20)}",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


# --------------------------------------------------------------------------------------------------
# filter_and_normalize
# --------------------------------------------------------------------------------------------------


def filter_and_normalize(
    adata: AnnData,
    min_shared_counts: int = 20,
    n_top_genes: int | None = None,
    spliced_layer: str = "spliced",
    unspliced_layer: str = "unspliced",
    log: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Filter genes, normalise spliced/unspliced per cell and log-transform ``X`` (scVelo semantics).

    Steps, in order:

    1. Total counts per cell of each layer are taken on *all* genes, before any filtering (scVelo's
       "initial size").
    2. Shared-count filter: a gene is kept if ``sum over cells where spliced > 0 and unspliced > 0 of
       (spliced + unspliced) >= min_shared_counts``.
    3. Genes constant (e.g. all zero) in the spliced or the unspliced layer are dropped with a
       :class:`UserWarning` naming them.
    4. Each layer is normalised per cell by its own size factor ``total_c / median_c(total_c)``
       (cells with zero total keep factor 1), i.e. every cell is scaled to the median total of that
       layer; ``X`` is normalised the same way with its own totals.
    5. If ``n_top_genes`` is given and smaller than the number of genes left, the ``n_top_genes``
       most dispersed genes (scanpy ``highly_variable_genes``, ``flavor="seurat"``, computed on the
       log of the normalised ``X``) are kept.
    6. ``X`` is log1p-transformed if ``log``.

    Parameters
    ----------
    adata
        AnnData with raw (integer) spliced and unspliced counts.
    min_shared_counts
        Minimum shared counts per gene (see step 2). scVelo's ``min_shared_counts``.
    n_top_genes
        Keep only this many highly variable genes (needs scanpy); ``None`` keeps all.
    spliced_layer, unspliced_layer
        Names of the count layers; they are overwritten with the normalised values.
    log
        Apply ``log1p`` to ``X``.
    copy
        Return a modified copy instead of modifying ``adata`` in place.

    Returns
    -------
    AnnData or None
        The processed copy if ``copy`` else ``None``.

    Notes
    -----
    Writes (genes are subset in place, all other slots keep their content):

    - ``layers["raw_spliced"]``, ``layers["raw_unspliced"]``: the original counts (same format and
      dtype as given), for count likelihoods;
    - ``layers[spliced_layer]``, ``layers[unspliced_layer]``: normalised values (float32, same
      sparse/dense format as given);
    - ``X``: normalised (and log1p if ``log``) float32; if ``X`` is ``None`` it is built from the
      spliced layer;
    - ``obs["size_factor_spliced"]``, ``obs["size_factor_unspliced"]``, ``obs["size_factor_X"]``:
      the per-cell divisors used (total / median total, computed before gene filtering);
    - ``obs["initial_size_spliced"]``, ``obs["initial_size_unspliced"]``: total counts per cell before
      gene filtering;
    - ``var["shared_counts"]``: the shared counts of step 2;
    - ``var["highly_variable"]``, ``var["means"]``, ``var["dispersions"]``,
      ``var["dispersions_norm"]``: only when ``n_top_genes`` triggers a selection;
    - ``uns["velopyro_pp"]["filter_and_normalize"]``: parameters and gene counts.

    Raises
    ------
    VelopyroInputError
        On missing layers, NaN/inf, negative values, non-numeric dtypes, or if no gene passes.
    """
    _check_in_memory(adata, "filter_and_normalize")
    check_layer_pair(spliced_layer, unspliced_layer)
    x_s = get_layer(adata, spliced_layer, what="spliced layer")
    x_u = get_layer(adata, unspliced_layer, what="unspliced layer")
    check_matrix(x_s, spliced_layer, shape=adata.shape)
    check_matrix(x_u, unspliced_layer, shape=adata.shape)
    if adata.X is not None:
        check_matrix(adata.X, "X", shape=adata.shape)
    if adata.n_vars == 0 or adata.n_obs == 0:
        raise VelopyroInputError(f"adata has shape {adata.shape}; need at least one cell and one gene")
    if n_top_genes is not None and n_top_genes < 1:
        raise VelopyroInputError(f"n_top_genes must be a positive integer or None, got {n_top_genes}")
    for layer, x in ((spliced_layer, x_s), (unspliced_layer, x_u)):
        if not _looks_like_counts(x):
            warnings.warn(
                f"layer {layer!r} holds non-integer values; filter_and_normalize expects raw counts "
                "(already normalised data would be normalised again)",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    adata = adata.copy() if copy else adata
    n_genes_in = adata.n_vars
    x_s = adata.layers[spliced_layer]
    x_u = adata.layers[unspliced_layer]

    # 1. initial sizes on all genes
    size_s = _row_sum(x_s)
    size_u = _row_sum(x_u)
    size_x = _row_sum(adata.X) if adata.X is not None else size_s.copy()

    # 2. shared counts
    if sp.issparse(x_s) or sp.issparse(x_u):
        xs, xu = sp.csr_matrix(x_s), sp.csr_matrix(x_u)
        shared = _col_sum(xs.multiply(xu > 0)) + _col_sum(xu.multiply(xs > 0))
    else:
        xs, xu = np.asarray(x_s), np.asarray(x_u)
        both = (xs > 0) & (xu > 0)
        shared = (np.where(both, xs, 0).astype(np.float64) + np.where(both, xu, 0)).sum(axis=0)
    keep = shared >= min_shared_counts
    n_removed_shared = int((~keep).sum())

    # 3. constant genes in either layer (all-zero included)
    const = _constant_columns(xs) | _constant_columns(xu)
    dropped_const = adata.var_names[keep & const].tolist()
    _warn_dropped(dropped_const, "whose spliced or unspliced values are constant across cells")
    keep &= ~const
    if not keep.any():
        raise VelopyroInputError(
            f"no gene passes filter_and_normalize (min_shared_counts={min_shared_counts}, "
            f"{n_removed_shared} of {n_genes_in} genes below it); lower min_shared_counts"
        )
    adata.var["shared_counts"] = shared
    _subset_genes(adata, keep)

    # 4. normalise
    def factors(size: np.ndarray) -> np.ndarray:
        med = float(np.median(size))
        med = med if med > 0 else 1.0
        f = size / med
        f[f == 0] = 1.0
        return f

    f_s, f_u, f_x = factors(size_s), factors(size_u), factors(size_x)
    raw_s, raw_u = adata.layers[spliced_layer], adata.layers[unspliced_layer]
    adata.layers["raw_spliced"] = raw_s.copy()
    adata.layers["raw_unspliced"] = raw_u.copy()
    adata.layers[spliced_layer] = _scale_rows(raw_s, f_s)
    adata.layers[unspliced_layer] = _scale_rows(raw_u, f_u)
    if adata.X is None:
        adata.X = adata.layers[spliced_layer].copy()
        f_x = f_s
    else:
        adata.X = _scale_rows(adata.X, f_x)
    adata.obs["initial_size_spliced"] = size_s
    adata.obs["initial_size_unspliced"] = size_u
    adata.obs["size_factor_spliced"] = f_s
    adata.obs["size_factor_unspliced"] = f_u
    adata.obs["size_factor_X"] = f_x

    # 5. highly variable genes on log-normalised X
    n_hvg_removed = 0
    if n_top_genes is not None and n_top_genes < adata.n_vars:
        sc = _import_scanpy("filter_and_normalize(n_top_genes=...)")
        tmp = AnnData(_log1p(adata.X))
        tmp.var_names = adata.var_names
        sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes)
        for col in ("highly_variable", "means", "dispersions", "dispersions_norm"):
            adata.var[col] = tmp.var[col].to_numpy()
        hv = adata.var["highly_variable"].to_numpy(dtype=bool)
        n_hvg_removed = int((~hv).sum())
        _subset_genes(adata, hv)

    # 6. log
    if log:
        adata.X = _log1p(adata.X)

    _record(
        adata,
        "filter_and_normalize",
        {
            "min_shared_counts": min_shared_counts,
            "n_top_genes": n_top_genes,
            "spliced_layer": spliced_layer,
            "unspliced_layer": unspliced_layer,
            "log": log,
            "n_genes_in": n_genes_in,
            "n_removed_shared_counts": n_removed_shared,
            "removed_constant_genes": list(dropped_const),
            "n_removed_not_highly_variable": n_hvg_removed,
            "n_genes_out": adata.n_vars,
        },
    )
    return adata if copy else None


# --------------------------------------------------------------------------------------------------
# moments
# --------------------------------------------------------------------------------------------------


def _smoothing_operator(connectivities: Any) -> sp.csr_matrix:
    """Binarised kNN graph including self, rows normalised to sum to 1 (scVelo's moments)."""
    c = sp.csr_matrix(connectivities > 0, dtype=np.float32)
    c.setdiag(1.0)
    c.eliminate_zeros()
    rows = np.asarray(c.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags((1.0 / rows).astype(np.float32)) @ c)


def moments(
    adata: AnnData,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    copy: bool = False,
    *,
    spliced_layer: str = "spliced",
    unspliced_layer: str = "unspliced",
    random_state: int = 0,
) -> AnnData | None:
    """kNN-smoothed first moments ``Ms``, ``Mu`` of the normalised spliced/unspliced layers.

    PCA (scanpy, ``svd_solver="arpack"``) on ``X`` (the log-normalised expression, using
    ``var["highly_variable"]`` if present), a kNN graph on the first ``n_pcs`` PCs
    (``scanpy.pp.neighbors``, UMAP connectivities), then ``Ms = A @ spliced`` and ``Mu = A @ unspliced``
    where ``A`` is the binarised connectivity graph with the diagonal set (each cell is its own
    neighbour) and rows normalised to sum to one, as in scVelo.

    Parameters
    ----------
    adata
        AnnData after :func:`filter_and_normalize` (normalised layers, log-normalised ``X``).
    n_pcs
        Number of principal components (capped at ``min(n_obs, n_vars) - 1`` with a warning).
    n_neighbors
        Number of neighbours, including the cell itself (capped at ``n_obs`` with a warning).
    copy
        Return a modified copy instead of modifying ``adata`` in place.
    spliced_layer, unspliced_layer
        Normalised layers to smooth.
    random_state
        Seed for PCA and the neighbour search.

    Returns
    -------
    AnnData or None
        The processed copy if ``copy`` else ``None``.

    Notes
    -----
    Writes ``layers["Ms"]``, ``layers["Mu"]`` (dense float32), ``obsm["X_pca"]``, ``varm["PCs"]``,
    ``uns["pca"]`` (scanpy's PCA outputs), ``obsp["connectivities"]``, ``obsp["distances"]``,
    ``uns["neighbors"]`` (scanpy's graph) and ``uns["velopyro_pp"]["moments"]``.

    Raises
    ------
    VelopyroInputError
        On missing layers or ``X``, NaN/inf, negative values, or fewer than 2 cells.
    """
    _check_in_memory(adata, "moments")
    check_layer_pair(spliced_layer, unspliced_layer)
    x_s = get_layer(adata, spliced_layer, what="spliced layer")
    x_u = get_layer(adata, unspliced_layer, what="unspliced layer")
    x = get_layer(adata, "X", what="expression matrix")
    check_matrix(x_s, spliced_layer, shape=adata.shape)
    check_matrix(x_u, unspliced_layer, shape=adata.shape)
    check_matrix(x, "X", shape=adata.shape, allow_negative=True)
    if adata.n_obs < 2 or adata.n_vars < 2:
        raise VelopyroInputError(f"moments needs at least 2 cells and 2 genes, adata has shape {adata.shape}")
    if "filter_and_normalize" not in adata.uns.get(UNS_KEY, {}) and _looks_like_counts(x_s):
        warnings.warn(
            f"layer {spliced_layer!r} looks like raw counts; run velopyro.pp.filter_and_normalize first "
            "(moments smooths the layers as they are)",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    sc = _import_scanpy("moments")

    n_comps = min(int(n_pcs), min(adata.n_obs, adata.n_vars) - 1)
    if n_comps < n_pcs:
        warnings.warn(f"n_pcs={n_pcs} capped to {n_comps} for data of shape {adata.shape}",
                      stacklevel=caller_stacklevel())
    n_nb = min(int(n_neighbors), adata.n_obs)
    if n_nb < n_neighbors:
        warnings.warn(f"n_neighbors={n_neighbors} capped to {n_nb} (number of cells)", stacklevel=caller_stacklevel())

    adata = adata.copy() if copy else adata
    if not np.issubdtype(adata.X.dtype, np.floating):
        adata.X = adata.X.astype(np.float32)
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="arpack", random_state=random_state)
    sc.pp.neighbors(
        adata, n_neighbors=n_nb, n_pcs=n_comps, use_rep="X_pca", random_state=random_state
    )
    op = _smoothing_operator(adata.obsp["connectivities"])

    def smooth(v: Any) -> np.ndarray:
        v = sp.csr_matrix(v, dtype=np.float32) if sp.issparse(v) else np.asarray(v, dtype=np.float32)
        return np.ascontiguousarray(_as_array(op @ v), dtype=np.float32)

    adata.layers["Ms"] = smooth(adata.layers[spliced_layer])
    adata.layers["Mu"] = smooth(adata.layers[unspliced_layer])
    _record(
        adata,
        "moments",
        {
            "n_pcs": n_comps,
            "n_neighbors": n_nb,
            "spliced_layer": spliced_layer,
            "unspliced_layer": unspliced_layer,
            "random_state": random_state,
        },
    )
    return adata if copy else None


# --------------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------------


def scale(
    adata: AnnData,
    layers: Sequence[str] = ("Ms", "Mu"),
    copy: bool = False,
) -> AnnData | None:
    """Min-max scale each gene of the given layers to [0, 1] (veloVI's preprocessing).

    Each layer is scaled separately: ``x' = (x - min_g) / (max_g - min_g)``. Genes constant in any of
    the layers would divide by zero: they are dropped (from ``adata`` or the copy) with a
    :class:`UserWarning` naming them. The original values are
    ``x = x' * (var[f"{layer}_max"] - var[f"{layer}_min"]) + var[f"{layer}_min"]``; scaling an already
    scaled layer again composes the stored min/max so this stays true.

    Parameters
    ----------
    adata
        AnnData with the layers (typically after :func:`moments`).
    layers
        Layers to scale.
    copy
        Return a modified copy instead of modifying ``adata`` in place.

    Returns
    -------
    AnnData or None
        The processed copy if ``copy`` else ``None``.

    Notes
    -----
    Writes ``layers[layer]`` (dense float32 in [0, 1]), ``var[f"{layer}_min"]``,
    ``var[f"{layer}_max"]`` for each layer, and ``uns["velopyro_pp"]["scale"]``; subsets genes if
    constant genes are dropped.

    Raises
    ------
    VelopyroInputError
        On missing layers (``Ms``/``Mu``: run :func:`moments` first), NaN/inf, or if every gene is
        constant.
    """
    _check_in_memory(adata, "scale")
    if isinstance(layers, str):
        layers = (layers,)
    layers = list(layers)
    if not layers:
        raise VelopyroInputError("scale needs at least one layer name, got an empty list")
    const = np.zeros(adata.n_vars, dtype=bool)
    for layer in layers:
        x = get_layer(adata, layer, what="layer to scale")
        check_matrix(x, layer, shape=adata.shape, allow_negative=True)
        const |= _constant_columns(x)
    if const.all():
        raise VelopyroInputError(
            f"every gene is constant in layer(s) {layers}; nothing to scale: check the input"
        )

    adata = adata.copy() if copy else adata
    dropped = adata.var_names[const].tolist()
    _warn_dropped(dropped, f"constant across cells in layer(s) {layers} (cannot be min-max scaled)")
    _subset_genes(adata, ~const)

    for layer in layers:
        x = np.array(_as_array(adata.layers[layer]), dtype=np.float64)
        lo, hi = x.min(axis=0), x.max(axis=0)
        adata.layers[layer] = ((x - lo) / (hi - lo)).clip(0.0, 1.0).astype(np.float32)
        kmin, kmax = f"{layer}_min", f"{layer}_max"
        if kmin in adata.var and kmax in adata.var:
            # already scaled once: compose so that the stored min/max still undo everything
            old_lo = adata.var[kmin].to_numpy(dtype=np.float64)
            old_range = adata.var[kmax].to_numpy(dtype=np.float64) - old_lo
            lo, hi = old_lo + lo * old_range, old_lo + hi * old_range
        adata.var[kmin] = lo
        adata.var[kmax] = hi
    _record(adata, "scale", {"layers": layers, "removed_constant_genes": dropped})
    return adata if copy else None


# --------------------------------------------------------------------------------------------------
# select_genes
# --------------------------------------------------------------------------------------------------


def _steady_state_fit(s: np.ndarray, u: np.ndarray, perc: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene extreme-quantile steady-state ratio and R^2 (scVelo ``mode="deterministic"``).

    What scVelo's ``velocity(mode="deterministic")`` fits without an offset (``leastsq_NxN`` keeps only the upper
    percentile of ``perc=[5, 95]``): the slope over the cells at or above ``perc``, maxima clipped at 1e-3, and
    0 where it is undefined, as veloVI's gene selection (:func:`select_genes`) needs. Not the same estimate as
    :func:`velopyro.model.steady_state_ratio`, the start of gamma / beta, by design: that one also takes the
    lower tail of cells and gives 1 (a usable starting ratio) where the slope is undefined or not positive; on
    ``velopyro.datasets.simulate(500, 30, seed=1)`` the two differ by at most 0.4% (6.8e-3).
    """
    s = np.asarray(s, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    norm = s / s.max(axis=0).clip(1e-3, None) + u / u.max(axis=0).clip(1e-3, None)
    bound = np.percentile(norm, perc, axis=0)
    w = norm >= bound
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = (w * s * u).sum(axis=0) / (w * s * s).sum(axis=0)
    gamma[~np.isfinite(gamma)] = 0.0
    res = u - gamma * s
    tot = u - u.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - (res * res).sum(axis=0) / (tot * tot).sum(axis=0)
    r2[~np.isfinite(r2)] = 0.0
    return gamma, r2


def select_genes(
    adata: AnnData,
    min_r2: float = 0.01,
    copy: bool = False,
    *,
    min_gamma: float = 0.01,
    perc: float = 95.0,
    spliced_layer: str = "Ms",
    unspliced_layer: str = "Mu",
    subset: bool = True,
) -> AnnData | None:
    """Keep genes with a good steady-state fit (veloVI's gene selection, scVelo "deterministic").

    Per gene, with ``s``, ``u`` the (scaled) moments:

    1. Extreme cells: ``n = s / max(s) + u / max(u)`` (maxima clipped below at 1e-3); the cells with
       ``n >= percentile(n, perc)`` (the top 5% by default) are used for the fit. This is what
       scVelo's ``perc=[5, 95]`` reduces to when no offset is fitted: only the upper quantile.
    2. ``gamma = sum(s * u) / sum(s * s)`` over those cells (least squares through the origin,
       no offset).
    3. ``R^2 = 1 - SS_res / SS_tot`` on *all* cells, with ``SS_res = sum (u - gamma s)^2`` and
       ``SS_tot = sum (u - mean u)^2``; undefined values (0/0) count as 0.
    4. A gene is a velocity gene if ``R^2 > min_r2`` and ``gamma > min_gamma`` and both ``s`` and
       ``u`` have a positive value.

    The defaults (``min_r2 = min_gamma = 0.01``) are scVelo's, which the reference pipeline uses
    (``scv.tl.velocity(mode="deterministic")`` then positive R^2 and gamma).

    Parameters
    ----------
    adata
        AnnData with the moments (after :func:`moments`, usually :func:`scale`).
    min_r2
        Keep genes with ``R^2 > min_r2``.
    copy
        Return a modified copy instead of modifying ``adata`` in place.
    min_gamma
        Keep genes with ``gamma > min_gamma``.
    perc
        Percentile defining the extreme cells of step 1.
    spliced_layer, unspliced_layer
        Layers holding the moments.
    subset
        Subset ``adata`` to the velocity genes; if ``False`` only the ``var`` columns are written.

    Returns
    -------
    AnnData or None
        The processed copy if ``copy`` else ``None``.

    Notes
    -----
    Writes ``var["velocity_gamma"]``, ``var["velocity_r2"]``, ``var["velocity_genes"]`` (bool; all
    ``True`` after subsetting) and ``uns["velopyro_pp"]["select_genes"]``; subsets genes if
    ``subset``.

    Raises
    ------
    VelopyroInputError
        On missing layers, NaN/inf, or if no gene passes (lower ``min_r2`` / ``min_gamma``).
    """
    _check_in_memory(adata, "select_genes")
    check_layer_pair(spliced_layer, unspliced_layer)
    x_s = get_layer(adata, spliced_layer, what="spliced layer")
    x_u = get_layer(adata, unspliced_layer, what="unspliced layer")
    check_matrix(x_s, spliced_layer, shape=adata.shape, allow_negative=True)
    check_matrix(x_u, unspliced_layer, shape=adata.shape, allow_negative=True)
    if not 0.0 <= perc <= 100.0:
        raise VelopyroInputError(f"perc must be in [0, 100], got {perc}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise VelopyroInputError(f"adata has shape {adata.shape}; need at least one cell and one gene")
    s, u = _as_array(x_s), _as_array(x_u)
    gamma, r2 = _steady_state_fit(s, u, perc)
    genes = (r2 > min_r2) & (gamma > min_gamma) & (s > 0).any(axis=0) & (u > 0).any(axis=0)
    n_sel = int(genes.sum())
    if n_sel == 0 and subset:
        raise VelopyroInputError(
            f"no gene has a steady-state fit with R^2 > {min_r2} and gamma > {min_gamma} in layers "
            f"{spliced_layer!r}/{unspliced_layer!r} (max R^2 {r2.max():.3g}); lower min_r2/min_gamma "
            "or check the preprocessing"
        )

    adata = adata.copy() if copy else adata
    n_in = adata.n_vars
    adata.var["velocity_gamma"] = gamma.astype(np.float32)
    adata.var["velocity_r2"] = r2.astype(np.float32)
    adata.var["velocity_genes"] = genes
    if subset:
        _subset_genes(adata, genes)
    _record(
        adata,
        "select_genes",
        {
            "min_r2": min_r2,
            "min_gamma": min_gamma,
            "perc": perc,
            "spliced_layer": spliced_layer,
            "unspliced_layer": unspliced_layer,
            "subset": subset,
            "n_genes_in": n_in,
            "n_velocity_genes": n_sel,
        },
    )
    return adata if copy else None


# --------------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------------


def preprocess(
    adata: AnnData,
    min_shared_counts: int = 30,
    n_top_genes: int | None = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    min_r2: float = 0.01,
    copy: bool = False,
    *,
    min_gamma: float = 0.01,
    spliced_layer: str = "spliced",
    unspliced_layer: str = "unspliced",
    keep_raw_counts: bool = False,
    use_existing_moments: bool | None = None,
    random_state: int = 0,
) -> AnnData | None:
    """The reference's preprocessing: filter_and_normalize -> moments -> scale -> select_genes.

    Defaults are the veloVI tutorial's (``min_shared_counts=30, n_top_genes=2000``, 30 PCs, 30
    neighbours, min-max scaling of ``Ms``/``Mu``, scVelo's deterministic R^2/gamma thresholds).

    If ``adata.layers`` already holds ``Ms`` and ``Mu`` (e.g. computed with scVelo) and raw counts are
    not requested, they are used as they are: filtering, normalisation and moments are skipped and
    only :func:`scale` and :func:`select_genes` run (``use_existing_moments=None``, the default,
    decides this automatically; ``True``/``False`` force it).

    Parameters
    ----------
    adata
        AnnData with raw spliced/unspliced counts (or with ``Ms``/``Mu``, see above).
    min_shared_counts, n_top_genes
        See :func:`filter_and_normalize`.
    n_pcs, n_neighbors
        See :func:`moments`.
    min_r2
        See :func:`select_genes`.
    copy
        Return a processed copy instead of modifying ``adata`` in place. In place, the steps still run on
        a copy, whose contents replace ``adata``'s only when all of them have succeeded: on any error
        ``adata`` is exactly as it was.
    min_gamma
        See :func:`select_genes`.
    spliced_layer, unspliced_layer
        Raw count layers.
    keep_raw_counts
        Require ``layers["raw_spliced"]``/``layers["raw_unspliced"]`` in the result (for count
        likelihoods): existing ``Ms``/``Mu`` are then recomputed from the counts, unless the raw
        layers already exist.
    use_existing_moments
        ``None``: reuse ``Ms``/``Mu`` if present and ``keep_raw_counts`` is false (or the raw layers
        exist); ``True``: require and reuse them; ``False``: always recompute.
    random_state
        Seed for PCA and the neighbour search.

    Returns
    -------
    AnnData or None
        The processed copy if ``copy`` else ``None``.

    Notes
    -----
    Writes everything the four steps write (see their Notes) and
    ``uns["velopyro_pp"]["preprocess"]`` with ``used_existing_moments`` and the gene counts.

    Raises
    ------
    VelopyroInputError
        From any step (``adata`` unchanged); up front for missing or invalid layers, a backed AnnData, or
        no more cells than ``n_neighbors``.
    """
    _check_in_memory(adata, "preprocess")
    has_moments = "Ms" in adata.layers and "Mu" in adata.layers
    has_raw = "raw_spliced" in adata.layers and "raw_unspliced" in adata.layers
    if use_existing_moments is None:
        use_existing = has_moments and (not keep_raw_counts or has_raw)
    else:
        use_existing = bool(use_existing_moments)
    if use_existing:
        get_layer(adata, "Ms", what="moments layer")
        get_layer(adata, "Mu", what="moments layer")
        if keep_raw_counts and not has_raw:
            raise VelopyroInputError(
                "keep_raw_counts=True but the existing Ms/Mu come without layers 'raw_spliced'/"
                "'raw_unspliced'; pass use_existing_moments=False to recompute them from the counts"
            )
    else:
        # validate the raw input before copying / modifying anything
        for layer, what in ((spliced_layer, "spliced layer"), (unspliced_layer, "unspliced layer")):
            check_matrix(get_layer(adata, layer, what=what), layer, shape=adata.shape)
        if has_moments:
            warnings.warn(
                "adata already has layers 'Ms'/'Mu'; they are recomputed from the counts",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    if not use_existing and adata.n_obs <= n_neighbors:
        raise VelopyroInputError(
            f"adata has {adata.n_obs} cells, not more than n_neighbors={n_neighbors}: every cell's moments would "
            "average over all cells and every gene would become constant; use more cells or pass a smaller "
            f"n_neighbors (e.g. n_neighbors={max(2, adata.n_obs // 3)})"
        )

    # all steps run on a copy; the caller's AnnData is replaced by the result only when every step has
    # succeeded, so a failure leaves it exactly as it was
    target, adata = adata, adata.copy()
    n_genes_in = adata.n_vars
    if not use_existing:
        filter_and_normalize(
            adata,
            min_shared_counts=min_shared_counts,
            n_top_genes=n_top_genes,
            spliced_layer=spliced_layer,
            unspliced_layer=unspliced_layer,
        )
        moments(
            adata,
            n_pcs=n_pcs,
            n_neighbors=n_neighbors,
            spliced_layer=spliced_layer,
            unspliced_layer=unspliced_layer,
            random_state=random_state,
        )
    scale(adata, layers=("Ms", "Mu"))
    select_genes(adata, min_r2=min_r2, min_gamma=min_gamma)
    _record(
        adata,
        "preprocess",
        {
            "used_existing_moments": use_existing,
            "keep_raw_counts": keep_raw_counts,
            "min_shared_counts": min_shared_counts,
            "n_top_genes": n_top_genes,
            "n_pcs": n_pcs,
            "n_neighbors": n_neighbors,
            "min_r2": min_r2,
            "min_gamma": min_gamma,
            "n_genes_in": n_genes_in,
            "n_genes_out": adata.n_vars,
        },
    )
    if copy:
        return adata
    target._init_as_actual(adata)  # commit (what anndata's own in-place subsetting does)
    return None
