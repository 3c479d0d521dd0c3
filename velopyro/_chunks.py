"""Column chunks for per-gene statistics on cells x genes arrays, so no full-size temporary is made."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["gene_slices"]

#: Entries (cells x genes) per chunk: float64 temporaries of a chunk stay ~30-100 MB at any data size.
CHUNK_ENTRIES = 2**22


def gene_slices(n_cells: int, n_genes: int, max_entries: int | None = None) -> Iterator[slice]:
    """Consecutive slices of genes with at most ``max_entries`` cells x genes entries each (at least one gene).

    Parameters
    ----------
    n_cells, n_genes
        Shape of the array.
    max_entries
        Entries per chunk (default :data:`CHUNK_ENTRIES`).

    Yields
    ------
    slice
        Gene (column) ranges covering ``0 .. n_genes``.
    """
    step = max(1, (CHUNK_ENTRIES if max_entries is None else max_entries) // max(n_cells, 1))
    for g0 in range(0, n_genes, step):
        yield slice(g0, min(g0 + step, n_genes))
