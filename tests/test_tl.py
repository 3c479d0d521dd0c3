"""velopyro.tl: velocity graph, transition probabilities and the embedding projection."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from velopyro import tl
from velopyro._validation import VelopyroInputError


def _star() -> ad.AnnData:
    """Cell 0 with four neighbours: +-gene0 and +-(gene1 - gene2), uncorrelated with gene0; the embedding
    mirrors it."""
    ms = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, -1, 0], [0, -1, 1, 0]],
                  dtype=np.float32) + 1.0
    emb = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float32)
    vel = np.zeros_like(ms)
    vel[0] = [1.0, 0.0, 0.0, 0.0]  # towards cell 1
    vel[1:] = [0.5, 0.1, -0.2, 0.0]
    graph = np.zeros((5, 5))
    graph[0, 1:] = graph[1:, 0] = 1.0
    adata = ad.AnnData(ms.copy(), layers={"Ms": ms, "velocity": vel})
    adata.obsp["connectivities"] = sp.csr_matrix(graph)
    adata.obsm["X_umap"] = emb
    return adata


def test_velocity_points_to_known_neighbour() -> None:
    adata = _star()
    tl.velocity_embedding(adata, basis="umap")
    v = adata.obsm["velocity_umap"][0]
    assert v[0] > 0.5  # towards cell 1 (+x)
    assert abs(v[1]) < 1e-6  # the two perpendicular neighbours cancel

    corr = tl.signed_velocity_graph(adata).toarray()[0]
    assert corr[1] == pytest.approx(1.0)
    assert corr[2] == pytest.approx(-1.0)
    assert corr[3] == pytest.approx(0.0, abs=1e-9)
    assert corr[4] == pytest.approx(0.0, abs=1e-9)
    assert np.argmax(tl.transition_matrix(adata).toarray()[0]) == 1


def test_graph_in_scvelo_layout() -> None:
    """Positive part under velocity_graph, negative part under velocity_graph_neg, in obsp and uns."""
    adata = _star()
    tl.velocity_graph(adata)
    pos, neg = adata.obsp["velocity_graph"], adata.obsp["velocity_graph_neg"]
    assert pos.data.min() >= 0 and neg.data.max() < 0
    assert neg.toarray()[0, 2] == pytest.approx(-1.0) and pos.toarray()[0, 2] == 0
    assert pos.toarray()[0, 1] == pytest.approx(1.0) and neg.toarray()[0, 1] == 0
    assert adata.uns["velocity_graph"] is pos and adata.uns["velocity_graph_neg"] is neg
    signed = tl.signed_velocity_graph(adata)
    # every kNN edge is kept (zeros as 1e-12), so the transitions see all four neighbours of cell 0
    assert signed.getnnz(axis=1)[0] == 4
    np.testing.assert_allclose(signed.toarray(), (pos + neg).toarray())


def test_transition_rows_sum_to_one_and_sigma() -> None:
    adata = _star()
    tl.velocity_graph(adata)
    sharp = tl.transition_matrix(adata, sigma=0.05).toarray()
    flat = tl.transition_matrix(adata, sigma=10.0).toarray()
    np.testing.assert_allclose(sharp.sum(1), 1.0)
    assert sharp[0, 1] > flat[0, 1] > 0.25  # a wider kernel is closer to uniform (1/4)
    with pytest.raises(VelopyroInputError):
        tl.transition_matrix(adata, sigma=0.0)


def test_chain_all_arrows_forward() -> None:
    """Cells on a line in gene and embedding space, velocity along the line: every arrow points forward."""
    n = 60
    rng = np.random.default_rng(0)
    pos = np.linspace(0, 1, n)
    ms = np.column_stack([pos, 2 * pos, 1 - pos, 0.01 * rng.standard_normal(n)]).astype(np.float32)
    vel = np.tile(np.array([1.0, 2.0, -1.0, 0.0], dtype=np.float32), (n, 1))
    d = np.abs(pos[:, None] - pos[None, :])
    graph = ((d > 0) & (d <= 3.5 / (n - 1))).astype(float)
    adata = ad.AnnData(ms.copy(), layers={"Ms": ms, "velocity": vel})
    adata.obsp["connectivities"] = sp.csr_matrix(graph)
    adata.obsm["X_pca"] = np.column_stack([pos, 0.01 * rng.standard_normal(n)]).astype(np.float32)
    out = tl.velocity_embedding(adata, basis="pca", copy=True)
    assert "velocity_pca" not in adata.obsm  # copy=True leaves the input alone
    v = out.obsm["velocity_pca"]
    assert np.all(v[1:-1, 0] > 0)
    assert np.all(np.isfinite(v))

    tl.velocity_embedding(adata, basis="pca", n_neighbors=2)
    assert adata.obsp["velocity_graph"].getnnz(axis=1).max() <= 2

    tl.velocity_confidence(adata)
    np.testing.assert_allclose(adata.obs["velocity_confidence"], 1.0, atol=1e-6)
    assert np.all(adata.obs["velocity_length"] > 0)


def test_missing_inputs_raise() -> None:
    adata = _star()
    with pytest.raises(VelopyroInputError, match="X_tsne"):
        tl.velocity_embedding(adata, basis="tsne")
    del adata.obsp["connectivities"]
    with pytest.raises(VelopyroInputError, match="connectivities"):
        tl.velocity_embedding(adata)
    adata = _star()
    with pytest.raises(VelopyroInputError, match="nope"):
        tl.velocity_graph(adata, vkey="nope")


def test_zero_velocity_and_duplicate_cells_give_no_nan() -> None:
    adata = _star()
    adata.layers["velocity"][:] = 0.0
    adata.layers["Ms"][2] = adata.layers["Ms"][0]  # duplicate of cell 0: zero displacement
    adata.obsm["X_umap"][2] = adata.obsm["X_umap"][0]
    tl.velocity_embedding(adata)
    assert np.all(np.isfinite(adata.obsm["velocity_umap"]))
    np.testing.assert_allclose(adata.obsm["velocity_umap"], 0.0, atol=1e-6)
