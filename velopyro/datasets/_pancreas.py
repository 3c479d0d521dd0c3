"""The mouse pancreas endocrinogenesis data (Bastidas-Ponce et al. 2019), shipped with velopyro."""

from __future__ import annotations

from importlib import resources

import anndata
from anndata import AnnData

__all__ = ["pancreas"]

_FILE = "pancreas.h5ad"


def pancreas() -> AnnData:
    """Load the mouse pancreas (E15.5) data with raw spliced/unspliced counts, without network access.

    Mouse pancreatic endocrinogenesis at embryonic day 15.5 (Bastidas-Ponce et al., Development 2019;
    GEO GSE132188), the standard example of scVelo and veloVI: 3,696 cells x 2,000 highly variable
    genes. The counts come from the R package SuperCell (``data/pancreas.rda``, GPL-3; the data are
    public on GEO), converted to AnnData with unchanged values.

    Returns
    -------
    anndata.AnnData
        A new, in-memory AnnData (3,696 x 2,000) with

        - ``layers["spliced"]``, ``layers["unspliced"]``: raw counts (CSR, float32 holding integers);
        - ``X``: a copy of the spliced counts;
        - ``obs["clusters"]`` (Ductal, Ngn3 low EP, Ngn3 high EP, Pre-endocrine, Beta, Alpha, Delta,
          Epsilon), ``obs["clusters_coarse"]``, ``obs["S_score"]``, ``obs["G2M_score"]``,
          ``obs["nCount_spliced"]``, ``obs["nCount_unspliced"]``.

    Notes
    -----
    Known transitions: Ductal -> Ngn3 low EP -> Ngn3 high EP -> Pre-endocrine -> {Alpha, Beta, Delta,
    Epsilon}. The shipped file omits ``X`` (it equals ``layers["spliced"]``), which halves its size;
    ``X`` is rebuilt on load. Each call reads the file again, so callers may modify the result.
    """
    ref = resources.files(__package__).joinpath(_FILE)
    with resources.as_file(ref) as path:
        adata = anndata.read_h5ad(path)
    adata.X = adata.layers["spliced"].copy()
    return adata
