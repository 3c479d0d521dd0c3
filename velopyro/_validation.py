"""Input checks shared by every velopyro entry point (the model class, :mod:`velopyro.pp`, the CLI).

Every failure raises :class:`VelopyroInputError`, a :class:`ValueError` subclass whose message is a
single line naming the offending layer (or genes) and the fix, so the CLI can catch it and print it.

Nothing here modifies the caller's AnnData: :func:`check_expression` always returns fresh dense
``float32`` copies, never views of the user's arrays.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

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
    "check_int",
    "check_number",
    "check_bool",
    "check_choice",
    "check_n_samples",
    "check_layer_pair",
    "check_counts_range",
    "check_counts",
    "check_batch_key",
    "check_batch_categories",
    "MODEL_OPTION_CHECKS",
    "TRAIN_OPTION_CHECKS",
    "check_model_options",
    "check_train_options",
    "MAX_HIDDEN",
    "MAX_COUNT",
]

#: Largest ``n_hidden`` / ``n_latent`` accepted (a wider network is a typo, not a model: 2**16).
MAX_HIDDEN = 65536
#: Largest ``n_layers`` accepted.
MAX_LAYERS = 64
#: Largest count accepted by the count likelihoods: 2**24, the largest integer float32 holds exactly.
MAX_COUNT = 2**24

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


def _scipy_dtype(x: Any) -> Any:
    """A sparse matrix whose values are float16 (which scipy.sparse cannot compute with: ``toarray`` and
    conversions fail) as float32; any other matrix as it is."""
    if sp.issparse(x) and x.dtype == np.float16:
        return x.astype(np.float32)
    return x


def _dense_float32(x: Any, copy: bool = True) -> np.ndarray:
    """C-contiguous float32 dense values of ``x``: a fresh copy, or (``copy=False``) ``x`` itself when it
    already is such an array."""
    if sp.issparse(x):
        out = _scipy_dtype(x).toarray()  # always a new array
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
        x = sp.csc_matrix(_scipy_dtype(x))
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

    Accepts dense numpy arrays and scipy sparse (CSR/CSC/COO) matrices of any integer or float dtype
    (float16 sparse values, which scipy itself cannot densify, are converted to float32).
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
    check_layer_pair(spliced_layer, unspliced_layer)
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


# ---- arguments and options: one check per public option ------------------------------------------------


def _fail(name: str, expected: str, value: Any, example: Any = None) -> NoReturn:
    fix = "" if example is None else f" (e.g. {name}={example!r})"
    raise VelopyroInputError(f"{name} must be {expected}, got {value!r}{fix}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False, example: Any = None) -> int | None:
    """Return ``value`` as an ``int`` or raise a one-line :class:`VelopyroInputError`.

    Parameters
    ----------
    value
        The argument (``bool`` and floats are refused: ``2.0`` is not an integer option).
    name
        The argument's name, for the message.
    minimum, maximum
        Inclusive bounds (not checked when ``None``).
    allow_none
        Accept (and return) ``None``.
    example
        A valid value shown in the message.

    Returns
    -------
    int or None
        The value.
    """
    if value is None and allow_none:
        return None
    lo = "" if minimum is None else (" positive" if minimum == 1 else " non-negative" if minimum == 0 else "")
    expected = f"a{lo} integer" if lo else "an integer"
    if minimum is not None and not lo:
        expected += f" >= {minimum}"
    if maximum is not None:
        expected += f" <= {maximum}"
    if allow_none:
        expected += " or None"
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(name, expected, value, example)
    return int(value)


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False, exclusive_maximum: bool = False, allow_inf: bool = False,
                 allow_none: bool = False, example: Any = None) -> float | None:
    """Return ``value`` as a finite ``float`` in range or raise a one-line :class:`VelopyroInputError`.

    Parameters
    ----------
    value
        The argument (``bool``, strings and NaN are refused).
    name
        The argument's name, for the message.
    minimum, maximum
        Bounds (not checked when ``None``).
    exclusive_minimum, exclusive_maximum
        Whether the bounds themselves are excluded.
    allow_inf
        Accept ``+inf`` (e.g. "no limit").
    allow_none
        Accept (and return) ``None``.
    example
        A valid value shown in the message.

    Returns
    -------
    float or None
        The value.
    """
    if value is None and allow_none:
        return None
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if exclusive_maximum else '<='} {maximum:g}")
    if minimum == 0 and maximum is None:
        base = "positive number" if exclusive_minimum else "non-negative number"
    else:
        base = "number" + (f" {' and '.join(parts)}" if parts else "")
    expected = ("a " if allow_inf else "a finite ") + base
    if allow_none:
        expected += " or None"
    ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (math.isfinite(v) or (allow_inf and v > 0))
        if ok and minimum is not None:
            ok = v > minimum if exclusive_minimum else v >= minimum
        if ok and maximum is not None:
            ok = v < maximum if exclusive_maximum else v <= maximum
    if not ok:
        _fail(name, expected, value, example)
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` as a ``bool`` (``True``/``False``, numpy booleans) or raise.

    Parameters
    ----------
    value
        The argument; strings such as ``"no"`` and numbers are refused (``"no"`` is truthy).
    name
        The argument's name, for the message.

    Returns
    -------
    bool
        The value.
    """
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "True or False", value, True)
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence[Any], *, allow_none: bool = False) -> Any:
    """Return ``value`` if it is one of ``choices`` (or ``None`` when allowed), else raise.

    Parameters
    ----------
    value
        The argument.
    name
        The argument's name, for the message.
    choices
        The accepted values.
    allow_none
        Accept ``None``.

    Returns
    -------
    object
        The value.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        raise VelopyroInputError(f"{name} must be one of {', '.join(map(repr, choices))}"
                                 f"{' or None' if allow_none else ''}, got {value!r}.")
    return value


def check_n_samples(n_samples: Any, name: str = "n_samples", minimum: int = 1) -> int:
    """Return the number of posterior draws as an ``int`` or raise a one-line :class:`VelopyroInputError`.

    Parameters
    ----------
    n_samples
        Draws requested (a positive integer; ``0`` or ``-1`` would average nothing).
    name
        The argument's name, for the message.
    minimum
        The least number of draws the read-out needs.

    Returns
    -------
    int
        The value.
    """
    return check_int(n_samples, name, minimum=minimum, example=25)


def _check_str(value: Any, name: str, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        _fail(name, "a non-empty string" + (" or None" if allow_none else ""), value)
    return value


def _check_path(value: Any, name: str) -> Any:
    if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
        _fail(name, "a path (str or os.PathLike) or None", value)
    return value


def check_layer_pair(spliced_layer: Any, unspliced_layer: Any) -> None:
    """Refuse layer names that are not strings, or one layer given as both spliced and unspliced.

    Parameters
    ----------
    spliced_layer, unspliced_layer
        Layer names (``None``: the default, not checked).
    """
    _check_str(spliced_layer, "spliced_layer", allow_none=True)
    _check_str(unspliced_layer, "unspliced_layer", allow_none=True)
    if spliced_layer is not None and spliced_layer == unspliced_layer:
        raise VelopyroInputError(
            f"spliced_layer and unspliced_layer are both {spliced_layer!r}; the model needs two different "
            "layers (e.g. spliced_layer='Ms', unspliced_layer='Mu')."
        )


def check_batch_key(batch_key: Any, *, allow_none: bool = True) -> list[str] | None:
    """The ``obs`` column name(s) of a covariate as a list, or raise.

    Parameters
    ----------
    batch_key
        ``None``, one column name, or a list or tuple of distinct names.
    allow_none
        Accept ``None``.

    Returns
    -------
    list of str or None
        The keys.
    """
    if batch_key is None and allow_none:
        return None
    keys = [batch_key] if isinstance(batch_key, str) else list(batch_key) \
        if isinstance(batch_key, (list, tuple)) else None
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise VelopyroInputError(f"batch_key must be an obs column name or a list of them, got {batch_key!r} "
                                 "(e.g. batch_key='batch').")
    if len(set(keys)) != len(keys):
        raise VelopyroInputError(f"batch_key lists a column twice ({keys}); pass each obs column once.")
    return keys


def check_batch_categories(batch_categories: Any) -> dict[str, list[str]] | None:
    """Check ``{key: [category, ...]}``: string keys, each a non-empty list of distinct category names.

    Parameters
    ----------
    batch_categories
        ``None`` or the mapping (the first category of each key is the reference).

    Returns
    -------
    dict or None
        The mapping with the categories as lists of strings.
    """
    if batch_categories is None:
        return None
    if not isinstance(batch_categories, Mapping):
        _fail("batch_categories", "a dict {obs column: [category, ...]} or None", batch_categories,
              {"batch": ["b0", "b1"]})
    out: dict[str, list[str]] = {}
    for key, cats in batch_categories.items():
        if not isinstance(key, str):
            raise VelopyroInputError(f"batch_categories keys must be obs column names (strings), got {key!r}.")
        if isinstance(cats, str) or not isinstance(cats, (list, tuple, np.ndarray)):
            raise VelopyroInputError(
                f"batch_categories[{key!r}] must be a list of category names, got {cats!r} (e.g. "
                f"batch_categories={{{key!r}: ['b0', 'b1']}}; a string would be split into characters)."
            )
        names = [str(c) for c in cats]
        if not names:
            raise VelopyroInputError(f"batch_categories[{key!r}] is empty; list the categories of obs[{key!r}], "
                                     "the reference first.")
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise VelopyroInputError(f"batch_categories[{key!r}] lists {format_names(dupes)} more than once; "
                                     "list each category once, the reference first.")
        out[key] = names
    return out


def _check_named(value: Any, name: str, kind: str) -> Any:
    """A registered component: its name, or (in the API) an instance / class of it."""
    if isinstance(value, str):
        if not value:
            _fail(name, f"a registered {kind} name", value)
        return value
    if value is None or isinstance(value, (bool, numbers.Number, Mapping, list, tuple)):
        _fail(name, f"a registered {kind} name", value)
    return value


def _check_device(value: Any) -> Any:
    if isinstance(value, str) and value:
        return value
    if type(value).__name__ == "device" and type(value).__module__ == "torch":
        return value
    _fail("device", "'cpu', 'cuda', 'cuda:N' or 'auto'", value, "auto")


def _check_devices(value: Any) -> Any:
    if value is None:
        return None
    fix = ("devices must be a number of devices >= 1 (e.g. 2), -1 or 'auto' for all of them, or a list of "
           f"device indices (e.g. [0, 1]), got {value!r}.")
    if isinstance(value, str):
        text = value.strip()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if text in ("auto", "-1") or (text.isdigit() and int(text) >= 1) or \
                ("," in text and parts and all(p.isdigit() for p in parts)):
            return value
        raise VelopyroInputError(fix)
    if isinstance(value, (list, tuple)):
        if value and all(_is_int(v) and v >= 0 for v in value) and len(set(value)) == len(value):
            return value
        raise VelopyroInputError(fix)
    if _is_int(value) and (value >= 1 or value == -1):
        return value
    raise VelopyroInputError(fix)


def _check_validation_indices(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool, Mapping)):
        _fail("validation_indices", "integer cell positions (e.g. np.flatnonzero(mask)) or None", value)
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise VelopyroInputError(f"validation_indices must be a non-empty 1-D array of non-negative integer cell "
                                 f"positions, got {arr.dtype} values of shape {arr.shape} (pass positions, e.g. "
                                 "np.flatnonzero(mask)).")
    return value


#: As :data:`velopyro._rng.SEED_MAX` (not imported: this module imports no other velopyro module).
_SEED_MAX = 2**32 - 1


def _check_seed(value: Any) -> Any:
    if not _is_int(value) or not 0 <= int(value) <= _SEED_MAX:
        raise VelopyroInputError(f"seed must be an integer in [0, {_SEED_MAX}], got {value!r}.")
    return value


def _check_strategy(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, (bool, numbers.Number, list, tuple, Mapping)):
        _fail("strategy", "a Lightning strategy name (e.g. 'ddp') or object, or None", value, "ddp")
    return value  # a Lightning Strategy object


#: One check per field of :class:`velopyro.train.TrainConfig` (``TrainConfig`` refuses a field without one).
TRAIN_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "max_epochs": lambda v: check_int(v, "max_epochs", minimum=1, example=500),
    "batch_size": lambda v: check_int(v, "batch_size", minimum=2, example=256),
    "lr": lambda v: check_number(v, "lr", minimum=0, exclusive_minimum=True, example=0.01),
    "weight_decay": lambda v: check_number(v, "weight_decay", minimum=0, example=0.01),
    "eps": lambda v: check_number(v, "eps", minimum=0, exclusive_minimum=True, example=0.01),
    "clip_norm": lambda v: check_number(v, "clip_norm", minimum=0, exclusive_minimum=True, allow_inf=True,
                                        example=10.0),
    "early_stopping": lambda v: check_bool(v, "early_stopping"),
    "patience": lambda v: check_int(v, "patience", minimum=0, example=45),
    "min_delta": lambda v: check_number(v, "min_delta", minimum=0, example=0.0),
    "kl_warmup_epochs": lambda v: check_int(v, "kl_warmup_epochs", minimum=0, allow_none=True, example=100),
    "penalty_fade": lambda v: check_bool(v, "penalty_fade"),
    "jit": lambda v: check_bool(v, "jit"),
    "device": _check_device,
    "preload": lambda v: check_bool(v, "preload"),
    "seed": _check_seed,
    "progress_bar": lambda v: check_bool(v, "progress_bar"),
    "train_size": lambda v: check_number(v, "train_size", minimum=0, exclusive_minimum=True, maximum=1,
                                         example=0.9),
    "validation_indices": _check_validation_indices,
    "loss_per_cell": lambda v: check_bool(v, "loss_per_cell"),
    "checkpoint_dir": lambda v: _check_path(v, "checkpoint_dir"),
    "checkpoint_every": lambda v: check_int(v, "checkpoint_every", minimum=1, example=1),
    "resume": lambda v: _check_path(v, "resume"),
    "accelerator": lambda v: _check_str(v, "accelerator", allow_none=True),
    "devices": _check_devices,
    "strategy": _check_strategy,
    "num_nodes": lambda v: check_int(v, "num_nodes", minimum=1, example=1),
}


def check_train_options(options: Mapping[str, Any]) -> None:
    """Check every training option (the fields of :class:`velopyro.train.TrainConfig`).

    Parameters
    ----------
    options
        Field name to value.

    Raises
    ------
    VelopyroInputError
        For the first value out of its type or range, naming it and a valid value.
    RuntimeError
        For a field without a check in :data:`TRAIN_OPTION_CHECKS` (a new option must get one).
    """
    for name, value in options.items():
        if name not in TRAIN_OPTION_CHECKS:
            raise RuntimeError(f"training option {name!r} has no check in velopyro._validation.TRAIN_OPTION_CHECKS")
        TRAIN_OPTION_CHECKS[name](value)


#: ``VeloPyro``'s ``rate_init`` choices (``velopyro.api.RATE_INITS``; the CLI reads them here, without torch)
RATE_INITS = ("auto", "select", "steady_state", "constant")
_BATCH_EFFECTS = ("auto", "scale_offset", "scale", "none")
_BATCH_ENCODERS = ("corrected", "onehot")

#: One check per option of :class:`velopyro.VeloPyro` (and per field of a saved ``config.json``).
MODEL_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "spliced_layer": lambda v: _check_str(v, "spliced_layer", allow_none=True),
    "unspliced_layer": lambda v: _check_str(v, "unspliced_layer", allow_none=True),
    "likelihood": lambda v: _check_named(v, "likelihood", "likelihood"),
    "state_coupling": lambda v: _check_named(v, "state_coupling", "state coupling"),
    "pi_guide": lambda v: _check_named(v, "pi_guide", "guide"),
    "n_latent": lambda v: check_int(v, "n_latent", minimum=1, maximum=MAX_HIDDEN, example=10),
    "n_hidden": lambda v: check_int(v, "n_hidden", minimum=1, maximum=MAX_HIDDEN, example=256),
    "n_layers": lambda v: check_int(v, "n_layers", minimum=1, maximum=MAX_LAYERS, example=1),
    "dropout_rate": lambda v: check_number(v, "dropout_rate", minimum=0, maximum=1, exclusive_maximum=True,
                                           example=0.1),
    "t_max": lambda v: check_number(v, "t_max", minimum=0, exclusive_minimum=True, example=20.0),
    "switch_penalty": lambda v: check_number(v, "switch_penalty", minimum=0, example=0.2),
    "size_factor_key": lambda v: _check_str(v, "size_factor_key", allow_none=True),
    "rate_init": lambda v: check_choice(v, "rate_init", RATE_INITS),
    "batch_key": lambda v: check_batch_key(v),
    "batch_effect": lambda v: check_choice(v, "batch_effect", _BATCH_EFFECTS, allow_none=True),
    "batch_encoder": lambda v: check_choice(v, "batch_encoder", _BATCH_ENCODERS, allow_none=True),
    "batch_categories": check_batch_categories,
    "kinetics": lambda v: _check_named(v, "kinetics", "kinetics"),
}


def check_model_options(options: Mapping[str, Any]) -> None:
    """Check the options of :class:`velopyro.VeloPyro` (or the ``config`` of a saved model).

    Parameters
    ----------
    options
        Option name to value; ``spliced_layer`` and ``unspliced_layer`` must differ.

    Raises
    ------
    VelopyroInputError
        For an unknown option or the first value out of its type or range, naming it and a valid value.
    """
    unknown = sorted(set(options) - set(MODEL_OPTION_CHECKS))
    if unknown:
        raise VelopyroInputError(f"unknown model option(s) {format_names(unknown)}; the options are "
                                 f"{', '.join(MODEL_OPTION_CHECKS)}.")
    for name, value in options.items():
        MODEL_OPTION_CHECKS[name](value)
    check_layer_pair(options.get("spliced_layer"), options.get("unspliced_layer"))


def check_counts_range(x: np.ndarray, layer: str, likelihood: str) -> None:
    """Refuse counts above :data:`MAX_COUNT` (``2**24``) for a count likelihood.

    Beyond ``2**24`` float32 no longer holds every integer, and no sequencing experiment counts that many
    molecules of one gene in one cell: such a value (e.g. ``1e30``) is a unit or encoding error.

    Parameters
    ----------
    x
        The counts (dense).
    layer
        Layer name, for the message.
    likelihood
        The likelihood's name, for the message.
    """
    top = float(np.max(x)) if np.size(x) else 0.0
    if top > MAX_COUNT:
        raise VelopyroInputError(
            f"layer {layer!r} holds counts up to {top:.3g}, above {MAX_COUNT} (2**24, the largest count "
            f"likelihood={likelihood!r} accepts); pass the raw UMI or read counts, or use likelihood='normal' on "
            "Ms/Mu."
        )


def check_counts(x: np.ndarray, layer: str, likelihood: str) -> None:
    """Refuse a layer that a count likelihood cannot model: non-integer values, or counts above
    :data:`MAX_COUNT` (:func:`check_counts_range`).

    Parameters
    ----------
    x
        The counts (dense; in memory, or one block of cells read from disk).
    layer
        Layer name, for the message.
    likelihood
        The likelihood's name, for the message.
    """
    if not np.all(np.equal(np.mod(x, 1), 0)):
        raise VelopyroInputError(
            f"likelihood={likelihood!r} models raw counts, but layer {layer!r} holds non-integer "
            "values; pass the raw count layers (e.g. spliced_layer='raw_spliced') or use "
            "likelihood='normal' on Ms/Mu."
        )
    check_counts_range(x, layer, likelihood)
