"""Out-of-core inputs and outputs: statistics of a data set on disk in one streamed pass, chunked writes.

:func:`stream_inputs` reads an ``.h5ad`` file or a zarr store block by block once and returns everything
:class:`velopyro.VeloPyro` needs before training: the input checks (finite, non-negative, integer counts,
constant genes), per-cell size factors over all cells, and a fixed-size, evenly spaced subsample of cells
from which the per-gene starting values are computed (switch targets u*, s* of eq. 27, the steady-state
ratio, the likelihood's noise scales). The subsample holds at most :data:`STAT_ENTRIES` cells x genes
entries per layer, so the memory is the same at any number of cells; data sets with fewer entries use
every cell, and their statistics equal those of the in-memory path exactly.

:class:`StoreWriter` writes cells x genes outputs in row chunks into an ``.h5ad`` file or a zarr store
in AnnData's on-disk format (so ``anndata.read_h5ad`` / ``read_zarr`` read them back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import VelopyroInputError, check_counts, check_matrix, format_names
from .data import BackedVeloData
from .data import open_store as _open_store

__all__ = ["STAT_ENTRIES", "StreamedInputs", "StoreWriter", "is_on_disk", "store_path", "stream_inputs",
           "read_frame", "layer_names"]

#: Entries (cells x genes) of the per-gene statistics' cell subsample, per layer (16 MB as float32).
STAT_ENTRIES = 2**22
#: Entries per block of the streamed pass.
BLOCK_ENTRIES = 2**22


def open_store(path: str) -> Any:
    """Open an ``.h5ad`` file (h5py) or a zarr store read-only, or raise a one-line error.

    :func:`velopyro.data.open_store` (the opener itself) with its h5py / zarr errors as input errors.

    Parameters
    ----------
    path
        File or directory.

    Returns
    -------
    h5py.File or zarr.Group
        The root group.

    Raises
    ------
    VelopyroInputError
        For a path that is not a readable HDF5 file or zarr group (empty, truncated, text, a plain
        directory), naming it; no h5py or zarr traceback.
    """
    try:
        return _open_store(path)
    except Exception as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        kind = "directory" if os.path.isdir(path) else "file"
        why = lines[0] if lines else type(err).__name__
        raise VelopyroInputError(
            f"cannot read the {kind} {str(path)!r} as an .h5ad file or a .zarr store ({why}); "
            "pass an AnnData written by anndata (adata.write_h5ad / adata.write_zarr), complete and not damaged."
        ) from err


def is_on_disk(source: Any) -> bool:
    """Whether ``source`` is a path (``.h5ad`` file or zarr store) or an AnnData backed by a file.

    Parameters
    ----------
    source
        What the user passed to :class:`velopyro.VeloPyro`.

    Returns
    -------
    bool
        True for the out-of-core path.
    """
    return isinstance(source, (str, os.PathLike)) or bool(getattr(source, "isbacked", False))


def store_path(source: Any) -> str:
    """The file or directory behind ``source`` (a path or a backed AnnData).

    Parameters
    ----------
    source
        A path or a backed AnnData.

    Returns
    -------
    str
        The path; raises :class:`VelopyroInputError` if it does not exist.
    """
    path = str(source.filename if getattr(source, "isbacked", False) else source)
    if not os.path.exists(path):
        raise VelopyroInputError(f"{path!r} does not exist; pass an .h5ad file or a .zarr store written by AnnData.")
    return path


def read_frame(path: str, key: str) -> Any:
    """Read ``obs`` or ``var`` (a pandas DataFrame) of an AnnData store without its matrices.

    Parameters
    ----------
    path
        The store.
    key
        ``"obs"`` or ``"var"``.

    Returns
    -------
    pandas.DataFrame
        The frame.
    """
    from anndata.io import read_elem

    root = open_store(path)
    try:
        if key not in root:
            raise VelopyroInputError(f"{path!r} has no {key!r} element, so it is not an AnnData store; pass an AnnData "
                                     "written by anndata (adata.write_h5ad / adata.write_zarr).")
        try:
            return read_elem(root[key])
        except Exception as err:  # a damaged element
            raise VelopyroInputError(f"cannot read {key!r} of {path!r} ({type(err).__name__}); the file is damaged: "
                                     "write it again with anndata.") from err
    finally:
        if hasattr(root, "close"):
            root.close()


def layer_names(path: str) -> set[str]:
    """Names of the layers of an AnnData store (``"X"`` included when present).

    Parameters
    ----------
    path
        The store.

    Returns
    -------
    set of str
        The layer names.
    """
    root = open_store(path)
    try:
        names = set(root["layers"].keys()) if "layers" in root else set()
        return names | ({"X"} if "X" in root else set())
    finally:
        if hasattr(root, "close"):
            root.close()


def _element(layer: str) -> str:
    return "X" if layer == "X" else f"layers/{layer}"


class StreamedInputs:
    """What one streamed pass over the data on disk gives (see :func:`stream_inputs`).

    Attributes
    ----------
    data
        The :class:`~velopyro.data.BackedVeloData` (size factors in memory).
    rows
        The subsample's cell indices (sorted).
    u, s
        The subsample's observations, ``(len(rows), G)`` float32.
    size_factor_u, size_factor_s
        The subsample's size factors, ``(len(rows),)``.
    max_value
        The largest observation (for the Normal likelihood's scale warning).
    """

    def __init__(self, data: BackedVeloData, rows: np.ndarray, u: np.ndarray, s: np.ndarray,
                 max_value: float) -> None:
        self.data = data
        self.rows = rows
        self.u, self.s = u, s
        self.size_factor_u = data.size_factor_u[rows, 0].numpy()
        self.size_factor_s = data.size_factor_s[rows, 0].numpy()
        self.max_value = max_value


def stat_rows(n_cells: int, n_genes: int, max_entries: int | None = None) -> np.ndarray:
    """The evenly spaced cells from which per-gene statistics are computed (all cells when they fit).

    Parameters
    ----------
    n_cells, n_genes
        Shape of the data.
    max_entries
        Cells x genes entries at most (default :data:`STAT_ENTRIES`).

    Returns
    -------
    numpy.ndarray
        Sorted unique cell indices.
    """
    k = max(1, (STAT_ENTRIES if max_entries is None else max_entries) // max(n_genes, 1))
    if n_cells <= k:
        return np.arange(n_cells)
    return np.unique(np.round(np.linspace(0, n_cells - 1, k)).astype(np.int64))


def stream_inputs(path: str, spliced_layer: str, unspliced_layer: str, var_names: Any, *, is_count: bool,
                  likelihood_name: str, size_factor: np.ndarray | None) -> StreamedInputs:
    """Check the layers of a store and collect size factors and the statistics subsample in one pass.

    Parameters
    ----------
    path
        ``.h5ad`` file or zarr store.
    spliced_layer, unspliced_layer
        Layer names (``"X"`` for the main matrix).
    var_names
        Gene names (for messages).
    is_count
        The likelihood models raw counts (integer check; size factors from the totals).
    likelihood_name
        For messages.
    size_factor
        Per-cell size factors from ``obs`` (``size_factor_key``), or None to compute them.

    Returns
    -------
    StreamedInputs
        The backed data and the subsample.
    """
    root = open_store(path)
    try:
        shapes = {}
        for name in (spliced_layer, unspliced_layer):
            key = _element(name)
            if key not in root:
                raise VelopyroInputError(
                    f"layer {name!r} not found in {path!r}; pass spliced_layer= / unspliced_layer= naming layers "
                    "of the file (for the Normal likelihood run velopyro.pp.preprocess on the data in memory "
                    "and write them first)."
                )
            try:
                shapes[name] = BackedVeloData.element_shape(root[key])
            except ValueError as err:
                raise VelopyroInputError(f"layer {name!r} of {path!r}: {err}") from None
            dtype = BackedVeloData.element_dtype(root[key])
            if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
                raise VelopyroInputError(f"layer {name!r} of {path!r} has non-numeric dtype {dtype}; store numbers.")
    finally:
        if hasattr(root, "close"):
            root.close()
    n, g = shapes[unspliced_layer]
    if shapes[spliced_layer] != (n, g) or len(var_names) != g:
        raise VelopyroInputError(
            f"layers {spliced_layer!r} {shapes[spliced_layer]} and {unspliced_layer!r} {(n, g)} of {path!r} must both "
            f"be cells x genes with {len(var_names)} genes."
        )
    if n < 3:
        raise VelopyroInputError(f"{path!r} has {n} cell(s); velopyro needs at least 3: pass more cells.")
    ones = torch.ones(n, 1)
    data = BackedVeloData(path, _element(unspliced_layer), _element(spliced_layer), ones, ones)
    rows = stat_rows(n, g)
    sub_u = np.empty((len(rows), g), np.float32)
    sub_s = np.empty((len(rows), g), np.float32)
    mins = {k: np.full(g, np.inf, np.float32) for k in ("u", "s")}
    maxs = {k: np.full(g, -np.inf, np.float32) for k in ("u", "s")}
    totals = {k: np.zeros(n, np.float64) for k in ("u", "s")}
    block = max(1, BLOCK_ENTRIES // g)
    for start, u, s in data.blocks(block):
        stop = start + len(u)
        for key, name, x in (("u", unspliced_layer, u), ("s", spliced_layer, s)):
            lo_, hi_ = x.min(0), x.max(0)  # NaN propagates into them, inf and negatives show in them
            if not (np.isfinite(lo_).all() and np.isfinite(hi_).all() and lo_.min() >= 0):
                check_matrix(x, name)  # raises, naming the problem
            if is_count:
                check_counts(x, name, likelihood_name)
            np.minimum(mins[key], lo_, out=mins[key])
            np.maximum(maxs[key], hi_, out=maxs[key])
            if is_count:
                totals[key][start:stop] = x.sum(1, dtype=np.float64)
        lo, hi = np.searchsorted(rows, [start, stop])
        sub_u[lo:hi] = u[rows[lo:hi] - start]
        sub_s[lo:hi] = s[rows[lo:hi] - start]
    names = np.asarray(var_names).astype(str)
    const_u, const_s = mins["u"] == maxs["u"], mins["s"] == maxs["s"]
    for mask, what in ((const_u & const_s, f"constant {spliced_layer!r} and {unspliced_layer!r} values"),
                       (const_u | const_s, f"constant values in {spliced_layer!r} or in {unspliced_layer!r}")):
        if mask.any():
            raise VelopyroInputError(
                f"{int(mask.sum())} gene(s) have {what} across all cells ({format_names(names[mask].tolist())}); "
                "the model cannot fit them: write the data without them (velopyro.pp.preprocess drops them)."
            )
    if size_factor is not None:
        sf_u = sf_s = np.asarray(size_factor, np.float32)
    elif is_count:
        sfs = []
        for key, name in (("u", "unspliced"), ("s", "spliced")):
            tot = totals[key]
            if np.any(tot <= 0):
                raise VelopyroInputError(
                    f"{int((tot <= 0).sum())} cell(s) have no {name} counts over the model's genes; filter them "
                    "(e.g. scanpy.pp.filter_cells(adata, min_counts=1)) or pass size_factor_key."
                )
            sfs.append((tot / np.median(tot)).astype(np.float32))
        sf_u, sf_s = sfs
    else:
        sf_u = sf_s = np.ones(n, np.float32)
    data.size_factor_u = torch.from_numpy(sf_u[:, None].copy())
    data.size_factor_s = torch.from_numpy(sf_s[:, None].copy())
    return StreamedInputs(data, rows, sub_u, sub_s, float(max(maxs["u"].max(), maxs["s"].max())))


class StoreWriter:
    """Write cells x genes outputs in row chunks into an AnnData store (``.h5ad`` file or zarr directory).

    A new store gets the fitted cells' ``obs`` and genes' ``var``; an existing one is opened for
    writing and its outputs of the same names are replaced. Arrays are created with AnnData's
    encoding attributes, so ``anndata.read_h5ad`` / ``anndata.read_zarr`` read the result.

    Parameters
    ----------
    path
        Target store; ``.zarr`` (or an existing directory) means zarr, anything else HDF5.
    obs, var
        Frames written when the store is new.
    """

    def __init__(self, path: str | os.PathLike, obs: Any, var: Any) -> None:
        import anndata

        self.path = str(path)
        self.zarr = os.path.isdir(self.path) or Path(self.path).suffix == ".zarr"
        if not os.path.exists(self.path):
            skeleton = anndata.AnnData(obs=obs, var=var)
            if self.zarr:
                skeleton.write_zarr(self.path)
            else:
                skeleton.write_h5ad(self.path)
        if self.zarr:
            import zarr

            self.root = zarr.open_group(self.path, mode="r+", use_consolidated=False)
        else:
            import h5py

            self.root = h5py.File(self.path, "r+")
        if "layers" not in self.root:
            grp = self.root.create_group("layers")
            grp.attrs["encoding-type"], grp.attrs["encoding-version"] = "dict", "0.1.0"

    def create(self, key: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int) -> Any:
        """Create (or replace) the dense array ``key`` (e.g. ``"layers/velocity"``).

        Parameters
        ----------
        key
            Element path.
        shape
            Full shape.
        dtype
            numpy dtype.
        chunk_rows
            Rows per storage chunk.

        Returns
        -------
        h5py.Dataset or zarr.Array
            Writable by row slices.
        """
        if key in self.root:
            del self.root[key]
        parent = key.rpartition("/")[0]
        if parent and parent not in self.root:
            grp = self.root.create_group(parent)
            grp.attrs["encoding-type"], grp.attrs["encoding-version"] = "dict", "0.1.0"
        chunks = (min(chunk_rows, shape[0]),) + tuple(shape[1:])
        if self.zarr:
            arr = self.root.create_array(key, shape=shape, dtype=dtype, chunks=chunks)
        else:
            arr = self.root.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks)
        arr.attrs["encoding-type"], arr.attrs["encoding-version"] = "array", "0.2.0"
        return arr

    def write_elem(self, key: str, value: Any) -> None:
        """Write a small element (a frame, a dict, an array) with AnnData's writer, replacing it.

        Parameters
        ----------
        key
            Element path (``"var"``, ``"obsm/X_velopyro"``, ``"uns/velopyro"``).
        value
            The element.
        """
        from anndata.io import write_elem

        parent, _, name = key.rpartition("/")
        grp = self.root[parent] if parent else self.root
        if parent and parent not in self.root:
            grp = self.root.create_group(parent)
            grp.attrs["encoding-type"], grp.attrs["encoding-version"] = "dict", "0.1.0"
        if name in grp:
            del grp[name]
        write_elem(grp, name, value)

    def close(self) -> None:
        """Flush and close the store (a zarr store's consolidated metadata is rewritten)."""
        if hasattr(self.root, "close"):
            self.root.close()
        if self.zarr:
            import zarr

            zarr.consolidate_metadata(self.path)
