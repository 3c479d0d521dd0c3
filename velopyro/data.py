"""Model inputs on the host: :class:`VeloData` (observations, per-cell size factors and batch codes in memory)
and :class:`BackedVeloData` (the same interface, the observations read from an ``.h5ad`` file or a zarr store
one minibatch at a time).

The lowest layer of the package's data flow: the model, the training loop and the posterior queries all
take one of them (through ``n_cells``, ``batch(idx, device)`` and ``shuffle(train_idx, generator)``); it
imports nothing from velopyro.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BackedVeloData", "VeloData", "open_store"]


@dataclass
class VeloData:
    """Model inputs on the host: observations, per-cell size factors and batch codes.

    Attributes
    ----------
    u, s
        Unspliced and spliced, ``(N, G)`` float32.
    size_factor_u, size_factor_s
        ``(N, 1)`` float32 (ones for the Normal likelihood).
    batch_index
        ``(N, K)`` int64 codes of the K categorical covariates (:mod:`velopyro.covariates`), or None
        without covariates (then :meth:`batch` hands out ``(B, 0)`` codes).
    """

    u: torch.Tensor
    s: torch.Tensor
    size_factor_u: torch.Tensor
    size_factor_s: torch.Tensor
    batch_index: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells N."""
        return self.u.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The model's positional arguments for the cells ``idx`` on ``device``.

        Parameters
        ----------
        idx
            Cell indices (on the host).
        device
            Target device.

        Returns
        -------
        tuple of torch.Tensor
            ``(idx, u, s, size_factor_u, size_factor_s, batch_index)``; ``batch_index`` is ``(B, K)`` int64,
            ``(B, 0)`` without covariates (always a tensor, so the tuple has one length and JIT can trace it).
        """
        nb = device.type != "cpu"
        codes = batch_codes(self.batch_index, idx)
        return tuple(t.to(device, non_blocking=nb) for t in
                     (idx, self.u[idx], self.s[idx], self.size_factor_u[idx], self.size_factor_s[idx], codes))

    def to(self, device: torch.device) -> VeloData:
        """Return a copy with every tensor on ``device`` (``preload``).

        Parameters
        ----------
        device
            Target device.

        Returns
        -------
        VeloData
            The moved data.
        """
        moved = VeloData(*(t.to(device) for t in (self.u, self.s, self.size_factor_u, self.size_factor_s)))
        if self.batch_index is not None:
            moved.batch_index = self.batch_index.to(device)
        return moved

    def shuffle(self, train_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One epoch's minibatch order of the training cells: a uniform permutation drawn from ``generator``.

        Parameters
        ----------
        train_idx
            Training cell indices.
        generator
            The training loop's generator (the same seed gives the same order).

        Returns
        -------
        torch.Tensor
            ``train_idx`` permuted.
        """
        return train_idx[torch.randperm(len(train_idx), generator=generator)]


def batch_codes(batch_index: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
    """The covariate codes of the cells ``idx``: ``(B, K)`` int64, ``(B, 0)`` without covariates.

    Parameters
    ----------
    batch_index
        ``(N, K)`` codes of every cell, or None.
    idx
        Cell indices.

    Returns
    -------
    torch.Tensor
        Always a tensor, so a minibatch's tuple has one length and JIT can trace it.
    """
    if batch_index is None:
        return torch.zeros((len(idx), 0), dtype=torch.int64)
    return batch_index[idx]


#: Cells per contiguous block of :meth:`BackedVeloData.shuffle` and cells per window whose blocks are mixed.
BLOCK_CELLS = 32
WINDOW_CELLS = 1024
#: Rows between two requested cells that a read spans rather than starting a second read.
MAX_GAP = 64


class BackedVeloData:
    """Model inputs read from an ``.h5ad`` file or a zarr store one minibatch at a time (out of core).

    The same interface as :class:`VeloData` for training and queries (:attr:`n_cells`, :meth:`batch`,
    :meth:`shuffle`); only the per-cell size factors are held in memory. A layer is a dense 2-D array or
    a CSR sparse group as AnnData writes them (``encoding-type`` ``"array"`` / ``"csr_matrix"``); each
    read takes contiguous row ranges, so reads stay sequential. The file is opened lazily in each process
    (the object pickles without its handle, e.g. for Lightning's worker processes) and only for reading.

    Parameters
    ----------
    path
        The ``.h5ad`` file or the ``.zarr`` directory.
    unspliced, spliced
        Element paths inside the store (``"layers/Mu"``, ``"X"``).
    size_factor_u, size_factor_s
        ``(N, 1)`` float32 tensors.
    batch_index
        ``(N, K)`` int64 covariate codes (held in memory), or None without covariates.
    """

    def __init__(self, path: str, unspliced: str, spliced: str, size_factor_u: torch.Tensor,
                 size_factor_s: torch.Tensor, batch_index: torch.Tensor | None = None) -> None:
        self.path = str(path)
        self.batch_index = batch_index
        self.keys = (unspliced, spliced)
        self.size_factor_u = size_factor_u
        self.size_factor_s = size_factor_s
        self._handle: tuple[int, Any] | None = None
        self.shape = tuple(int(x) for x in _element_shape(self._root()[unspliced]))

    @staticmethod
    def element_shape(elem: Any) -> tuple[int, ...]:
        """Shape of a stored layer (dense array or CSR group); ``ValueError`` for other encodings.

        Parameters
        ----------
        elem
            h5py / zarr element.

        Returns
        -------
        tuple of int
            ``(cells, genes)``.
        """
        return _element_shape(elem)

    @staticmethod
    def element_dtype(elem: Any) -> np.dtype:
        """numpy dtype of a stored layer's values.

        Parameters
        ----------
        elem
            h5py / zarr element.

        Returns
        -------
        numpy.dtype
            The dtype.
        """
        return np.dtype(elem.dtype if _encoding(elem) == "array" else elem["data"].dtype)

    # -- storage -----------------------------------------------------------------------------------------
    def _root(self) -> Any:
        pid = os.getpid()
        if self._handle is None or self._handle[0] != pid:
            self._handle = (pid, open_store(self.path))
        return self._handle[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def close(self) -> None:
        """Close the file handle (it is reopened on the next read)."""
        if self._handle is not None and hasattr(self._handle[1], "close"):
            self._handle[1].close()
        self._handle = None

    @property
    def n_cells(self) -> int:
        """Number of cells N."""
        return self.shape[0]

    @property
    def u(self) -> torch.Tensor:
        """Not available: the data are on disk."""
        raise RuntimeError(_IN_MEMORY_ONLY)

    @property
    def s(self) -> torch.Tensor:
        """Not available: the data are on disk."""
        raise RuntimeError(_IN_MEMORY_ONLY)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Unspliced and spliced of cells ``start`` to ``stop - 1`` as dense float32 arrays.

        Parameters
        ----------
        start, stop
            Row range.

        Returns
        -------
        tuple of numpy.ndarray
            ``(u, s)``, each ``(stop - start, G)``.
        """
        root = self._root()
        return tuple(_read_rows(root[k], start, stop) for k in self.keys)

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unspliced and spliced of the cells ``idx`` (any order), read in contiguous row ranges.

        Parameters
        ----------
        idx
            Cell indices.

        Returns
        -------
        tuple of numpy.ndarray
            ``(u, s)``, rows in the order of ``idx``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        cuts = np.flatnonzero(np.diff(srt) > MAX_GAP) + 1
        u_parts, s_parts = [], []
        for run in np.split(srt, cuts):
            u, s = self.read_rows(int(run[0]), int(run[-1]) + 1)
            rel = run - run[0]
            u_parts.append(u[rel])
            s_parts.append(s[rel])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return np.concatenate(u_parts)[inv], np.concatenate(s_parts)[inv]

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Stream the whole data set in consecutive blocks of ``rows`` cells.

        Parameters
        ----------
        rows
            Cells per block.

        Yields
        ------
        tuple
            ``(start, u, s)``: the first cell's index and the block's dense float32 arrays.
        """
        for start in range(0, self.n_cells, rows):
            u, s = self.read_rows(start, min(start + rows, self.n_cells))
            yield start, u, s

    # -- the VeloData interface ----------------------------------------------------------------------------
    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The model's positional arguments for the cells ``idx`` on ``device`` (read from disk).

        Parameters
        ----------
        idx
            Cell indices (on the host).
        device
            Target device.

        Returns
        -------
        tuple of torch.Tensor
            ``(idx, u, s, size_factor_u, size_factor_s, batch_index)`` as :meth:`VeloData.batch`.
        """
        u, s = self.read(idx.numpy())
        nb = device.type != "cpu"
        codes = batch_codes(self.batch_index, idx)
        return tuple(t.to(device, non_blocking=nb) for t in
                     (idx, torch.from_numpy(u), torch.from_numpy(s), self.size_factor_u[idx],
                      self.size_factor_s[idx], codes))

    def shuffle(self, train_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One epoch's order of the training cells, shuffled in blocks so that reads stay sequential.

        The training cells (in file order) are cut into blocks of :data:`BLOCK_CELLS`, the blocks are
        permuted, and the cells inside each window of :data:`WINDOW_CELLS` consecutive cells of that order
        are permuted again, so a minibatch mixes cells of many blocks from all over the file while each
        read covers one short contiguous range. Every draw comes from ``generator`` (same seed, same order).

        Parameters
        ----------
        train_idx
            Training cell indices.
        generator
            The training loop's generator.

        Returns
        -------
        torch.Tensor
            ``train_idx`` permuted.
        """
        srt = torch.sort(train_idx).values
        n = len(srt)
        n_blocks = -(-n // BLOCK_CELLS)
        block_of = torch.arange(n) // BLOCK_CELLS
        block_rank = torch.empty(n_blocks, dtype=torch.long)
        block_rank[torch.randperm(n_blocks, generator=generator)] = torch.arange(n_blocks)
        by_block = srt[torch.argsort(block_rank[block_of] * BLOCK_CELLS + torch.arange(n) % BLOCK_CELLS)]
        window = torch.arange(n, dtype=torch.float64) // WINDOW_CELLS
        key = window + torch.rand(n, generator=generator, dtype=torch.float64) * 0.5
        return by_block[torch.argsort(key)]

    def to(self, device: torch.device) -> VeloData:
        """Load everything into memory on ``device`` (``preload``): a :class:`VeloData`.

        Parameters
        ----------
        device
            Target device.

        Returns
        -------
        VeloData
            The data in memory.
        """
        u, s = self.read_rows(0, self.n_cells)
        return VeloData(torch.from_numpy(u), torch.from_numpy(s), self.size_factor_u,
                        self.size_factor_s, self.batch_index).to(device)


_IN_MEMORY_ONLY = ("this read-out needs the data in memory, but the model reads them from disk; build the model "
                   "on an AnnData in memory (e.g. anndata.read_h5ad(path) without backed=) to use it.")


def open_store(path: str) -> Any:
    """Open an ``.h5ad`` file (h5py) or a zarr store read-only.

    The bare opener, with h5py's or zarr's own exceptions (this module imports no other velopyro module);
    :func:`velopyro._disk.open_store` wraps it and turns them into one-line input errors naming the path.

    Parameters
    ----------
    path
        File or directory.

    Returns
    -------
    h5py.File or zarr.Group
        The root group.
    """
    if os.path.isdir(path):
        import zarr

        return zarr.open_group(path, mode="r")
    import h5py

    return h5py.File(path, "r")


def _encoding(elem: Any) -> str:
    enc = elem.attrs.get("encoding-type", "array")
    return enc.decode() if isinstance(enc, bytes) else str(enc)


def _element_shape(elem: Any) -> tuple[int, ...]:
    enc = _encoding(elem)
    if enc == "array":
        if len(elem.shape) != 2:
            raise ValueError(f"expected a cells x genes array, got shape {tuple(elem.shape)}.")
        return tuple(elem.shape)
    if enc == "csr_matrix":
        return tuple(int(x) for x in elem.attrs["shape"])
    raise ValueError(
        f"cannot read rows of a {enc!r} element from disk; store the layer as a dense array or a CSR matrix "
        "(e.g. adata.layers[key] = scipy.sparse.csr_matrix(adata.layers[key]) before writing)."
    )


def _read_rows(elem: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start .. stop - 1`` of a dense or CSR element as dense float32."""
    if _encoding(elem) == "array":
        return np.asarray(elem[start:stop], dtype=np.float32)
    ptr = np.asarray(elem["indptr"][start:stop + 1], dtype=np.int64)
    n_genes = int(elem.attrs["shape"][1])
    out = np.zeros((stop - start, n_genes), dtype=np.float32)
    lo, hi = int(ptr[0]), int(ptr[-1])
    if hi > lo:
        data = np.asarray(elem["data"][lo:hi], dtype=np.float32)
        cols = np.asarray(elem["indices"][lo:hi], dtype=np.int64)
        rows = np.repeat(np.arange(stop - start), np.diff(ptr))
        out[rows, cols] = data
    return out
