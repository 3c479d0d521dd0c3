"""Input checks shared by every velopyro entry point (the model class, :mod:`velopyro.pp`, the CLI).

Every failure raises :class:`VelopyroInputError`, a :class:`ValueError` subclass whose message is a
single line naming the offending layer (or genes) and the fix, so the CLI can catch it and print it.

Nothing here modifies the caller's AnnData: :func:`check_expression` always returns fresh dense
``float32`` copies, never views of the user's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "VelopyroInputError",
    "get_layer",
    "check_matrix",
    "check_expression",
    "find_constant_genes",
    "check_constant_genes",
    "format_names",
]

#: How to obtain a commonly used layer when it is missing.
_LAYER_HINTS: dict[str, str] = {
    "Ms": "run velopyro.pp.moments(adata) (or velopyro.pp.preprocess(adata)) first",
    "Mu": "run velopyro.pp.moments(adata) (or velopyro.pp.preprocess(adata)) first",
    "raw_spliced": "run velopyro.pp.filter_and_normalize(adata) first, which keeps the raw counts there",
    "raw_unspliced": "run velopyro.pp.filter_and_normalize(adata) first, which keeps the raw counts there",
    "spliced": "pass the name of your spliced count layer (e.g. spliced_layer=...) or add it to adata.layers",
    "unspliced": "pass the name of your unspliced count layer (e.g. unspliced_layer=...) or add it to "
    "adata.layers",
}


class VelopyroInputError(ValueError):
    """Invalid user input (missing layer, bad values, too few cells, ...).

    A :class:`ValueError` subclass, so ``except ValueError`` keeps working; the message is one line
    that names the problem, where it is, and how to fix it.
    """


def format_names(names: Sequence[str], limit: int = 10) -> str:
    """Format up to ``limit`` names for an error message, with a count of the rest.

    Parameters
    ----------
    names
        Names to show (e.g. gene names).
    limit
        Maximum number of names written out.

    Returns
    -------
    str
        ``"'a', 'b', 'c'"`` or ``"'a', 'b', ... and 12 more"``.
    """
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... and {len(names) - limit} more"
    return shown


def _is_anndata(adata: Any) -> bool:
    return hasattr(adata, "layers") and hasattr(adata, "obs_names") and hasattr(adata, "var_names")


def _check_anndata(adata: Any) -> None:
    if not _is_anndata(adata):
        raise VelopyroInputError(
            f"expected an anndata.AnnData, got {type(adata).__name__}; wrap your matrices with "
            "anndata.AnnData(X, layers={'spliced': ..., 'unspliced': ...})"
        )


def get_layer(adata: Any, layer: str, *, what: str = "layer") -> np.ndarray | sp.spmatrix | sp.sparray:
    """Return ``adata.layers[layer]`` (``adata.X`` for ``layer="X"``) or raise a helpful error.

    The returned object is the stored array itself (no copy); callers that modify it must copy.

    Parameters
    ----------
    adata
        The AnnData to read from.
    layer
        Layer name; ``"X"`` means ``adata.X``.
    what
        How to call the layer in the error message, e.g. ``"spliced layer"``.

    Returns
    -------
    numpy.ndarray or scipy.sparse matrix
        The layer, exactly as stored.

    Raises
    ------
    VelopyroInputError
        If ``adata`` is not an AnnData or the layer is missing; the message lists the available
        layers and how to obtain the missing one.
    """
    _check_anndata(adata)
    if not isinstance(layer, str):
        raise VelopyroInputError(f"{what} name must be a string, got {type(layer).__name__} {layer!r}")
    if layer == "X":
        if adata.X is None:
            raise VelopyroInputError(f"{what} 'X' is empty (adata.X is None); pass a layer name instead")
        return adata.X
    if layer not in adata.layers:
        available = list(adata.layers.keys())
        hint = _LAYER_HINTS.get(layer, "pass the name of an existing layer")
        raise VelopyroInputError(
            f"{what} {layer!r} not found in adata.layers (available: "
            f"{format_names(available, limit=20) if available else 'none'}); {hint}"
        )
    return adata.layers[layer]


def check_matrix(
    x: Any,
    layer: str,
    *,
    shape: tuple[int, int] | None = None,
    allow_negative: bool = False,
) -> None:
    """Check one expression matrix without copying or densifying it.

    Parameters
    ----------
    x
        Dense array-like or scipy sparse matrix (cells x genes).
    layer
        Name used in error messages.
    shape
        Expected shape (usually ``adata.shape``); not checked when ``None``.
    allow_negative
        Accept negative entries (e.g. centred data).

    Raises
    ------
    VelopyroInputError
        On a non-2D or wrongly shaped matrix, a non-numeric (object, string, bool, complex) dtype,
        NaN or infinite entries, or negative entries (unless ``allow_negative``).
    """
    if sp.issparse(x):
        values = x.data
        dtype = x.dtype
    else:
        values = np.asarray(x)
        dtype = values.dtype
    xshape = tuple(x.shape) if hasattr(x, "shape") else tuple(values.shape)
    if len(xshape) != 2:
        raise VelopyroInputError(f"layer {layer!r} must be 2-D (cells x genes), got shape {xshape}")
    if shape is not None and xshape != tuple(shape):
        raise VelopyroInputError(
            f"layer {layer!r} has shape {xshape} but adata has shape {tuple(shape)} (cells x genes); "
            "store a matrix with one row per cell and one column per gene"
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise VelopyroInputError(
            f"layer {layer!r} has non-numeric dtype {dtype}; store counts or expression as integers or "
            f"floats, e.g. adata.layers[{layer!r}] = adata.layers[{layer!r}].astype('float32')"
        )
    if np.issubdtype(dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(values)))
        n_inf = int(np.count_nonzero(np.isinf(values)))
        if n_nan or n_inf:
            raise VelopyroInputError(
                f"layer {layer!r} contains {n_nan} NaN and {n_inf} infinite entries; expression must be "
                "finite: fix or drop the affected cells/genes (or replace them, e.g. with 0)"
            )
    if not allow_negative:
        n_neg = int(np.count_nonzero(values < 0))
        if n_neg:
            raise VelopyroInputError(
                f"layer {layer!r} contains {n_neg} negative entries (min {values.min()}); spliced and "
                "unspliced abundances must be non-negative: pass raw counts or normalised (not centred) data"
            )


def _dense_float32(x: Any, copy: bool = True) -> np.ndarray:
    """C-contiguous float32 dense values of ``x``: a fresh copy, or (``copy=False``) ``x`` itself when it
    already is such an array."""
    if sp.issparse(x):
        out = x.toarray()  # always a new array
        return np.ascontiguousarray(out, dtype=np.float32)
    if not copy and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    return np.array(x, dtype=np.float32, copy=True, order="C")


def find_constant_genes(
    x_s: Any,
    x_u: Any,
    var_names: Sequence[str],
    *,
    either: bool = False,
) -> list[str]:
    """Names of genes whose spliced and unspliced values are constant across cells.

    All-zero genes are constant. A gene that is constant in both layers carries no information for
    the model (and min-max scaling would divide by zero).

    Parameters
    ----------
    x_s, x_u
        Spliced and unspliced matrices (cells x genes), dense or scipy sparse.
    var_names
        Gene names, one per column.
    either
        If ``True``, report genes constant in *either* layer instead of in both.

    Returns
    -------
    list of str
        Names of the constant genes, in column order.
    """
    const_s = _constant_columns(x_s)
    const_u = _constant_columns(x_u)
    mask = (const_s | const_u) if either else (const_s & const_u)
    names = np.asarray(var_names).astype(str)
    if len(names) != mask.shape[0]:
        raise VelopyroInputError(
            f"got {len(names)} gene names for {mask.shape[0]} genes; pass adata.var_names"
        )
    return names[mask].tolist()


def _constant_columns(x: Any) -> np.ndarray:
    """Boolean mask of columns whose maximum equals their minimum (NaN-free input assumed)."""
    if sp.issparse(x):
        x = sp.csc_matrix(x)
        xmax = x.max(axis=0).toarray().ravel()
        xmin = x.min(axis=0).toarray().ravel()
    else:
        x = np.asarray(x)
        if x.shape[0] == 0:
            return np.ones(x.shape[1], dtype=bool)
        xmax = x.max(axis=0)
        xmin = x.min(axis=0)
    return np.asarray(xmax == xmin).ravel()


def check_constant_genes(
    x_s: Any,
    x_u: Any,
    var_names: Sequence[str],
    *,
    spliced_layer: str = "spliced",
    unspliced_layer: str = "unspliced",
) -> None:
    """Raise if any gene has constant (e.g. all-zero) spliced *and* unspliced values.

    Parameters
    ----------
    x_s, x_u
        Spliced and unspliced matrices (cells x genes), dense or scipy sparse.
    var_names
        Gene names, one per column.
    spliced_layer, unspliced_layer
        Layer names used in the message.

    Raises
    ------
    VelopyroInputError
        Naming up to 10 constant genes and how to remove them.
    """
    genes = find_constant_genes(x_s, x_u, var_names)
    if genes:
        raise VelopyroInputError(
            f"{len(genes)} gene(s) have constant {spliced_layer!r} and {unspliced_layer!r} values across "
            f"all cells ({format_names(genes)}); the model cannot fit them: run "
            "velopyro.pp.filter_and_normalize / velopyro.pp.preprocess, or drop them, e.g. "
            "adata = adata[:, ~adata.var_names.isin(genes)].copy()"
        )


def check_expression(
    adata: Any,
    spliced_layer: str,
    unspliced_layer: str,
    *,
    min_cells: int | None = None,
    allow_negative: bool = False,
    reject_constant_genes: bool = False,
    copy: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the spliced/unspliced layers of ``adata`` and return dense float32 arrays.

    Accepts dense numpy arrays and scipy sparse (CSR/CSC/COO) matrices of any integer or float dtype.
    The caller's AnnData is never modified. With ``copy=True`` the returned arrays never share memory with
    it; with ``copy=False`` a layer that already is a dense C-contiguous float32 array is returned as it is
    (no second copy of a large data set; the caller must not write into it).

    Parameters
    ----------
    adata
        AnnData with the two layers.
    spliced_layer, unspliced_layer
        Layer names (``"X"`` means ``adata.X``).
    min_cells
        Minimum number of cells required (e.g. the minibatch size); not checked when ``None``.
    allow_negative
        Accept negative values.
    reject_constant_genes
        Also raise if a gene is constant in both layers (see :func:`check_constant_genes`).
    copy
        Always copy (default); see above.

    Returns
    -------
    tuple of numpy.ndarray
        ``(spliced, unspliced)``, each a C-contiguous ``float32`` array of shape ``adata.shape``.

    Raises
    ------
    VelopyroInputError
        On a missing layer, zero genes or cells, a shape mismatch, a non-numeric dtype, NaN or infinite
        values, negative values (unless ``allow_negative``), fewer than ``min_cells`` cells, or constant
        genes (if ``reject_constant_genes``).
    """
    _check_anndata(adata)
    x_s = get_layer(adata, spliced_layer, what="spliced layer")
    x_u = get_layer(adata, unspliced_layer, what="unspliced layer")
    n_obs, n_vars = adata.n_obs, adata.n_vars
    if n_vars == 0:
        raise VelopyroInputError(
            "adata has 0 genes; gene filtering removed everything: lower min_shared_counts / min_r2 "
            "or check the input"
        )
    if n_obs == 0:
        raise VelopyroInputError("adata has 0 cells; pass an AnnData with at least one cell")
    if tuple(x_s.shape) != tuple(x_u.shape):
        raise VelopyroInputError(
            f"spliced layer {spliced_layer!r} has shape {tuple(x_s.shape)} but unspliced layer "
            f"{unspliced_layer!r} has shape {tuple(x_u.shape)}; both must be cells x genes of adata"
        )
    for layer, x in ((spliced_layer, x_s), (unspliced_layer, x_u)):
        check_matrix(x, layer, shape=(n_obs, n_vars), allow_negative=allow_negative)
    if min_cells is not None and n_obs < min_cells:
        raise VelopyroInputError(
            f"adata has {n_obs} cells, fewer than the minibatch size {min_cells}; lower batch_size"
        )
    s = _dense_float32(x_s, copy=copy)
    u = _dense_float32(x_u, copy=copy)
    # float64 values beyond the float32 range become inf in the conversion
    for layer, x in ((spliced_layer, s), (unspliced_layer, u)):
        n_inf = int(np.count_nonzero(~np.isfinite(x)))
        if n_inf:
            raise VelopyroInputError(
                f"layer {layer!r} has {n_inf} entries that overflow float32 (|x| > 3.4e38); rescale it"
            )
    if reject_constant_genes:
        check_constant_genes(
            s, u, adata.var_names, spliced_layer=spliced_layer, unspliced_layer=unspliced_layer
        )
    return s, u
