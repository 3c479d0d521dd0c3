"""CellRank 2 on velopyro's output (skipped when cellrank is absent; CI installs the ``cellrank`` extra).

A tiny fitted simulation (the first 60% of the clock: one lineage from early to late cells): CellRank's
``VelocityKernel`` (deterministic, and Monte Carlo drawing from velopyro's posterior variance) combined
with its ``ConnectivityKernel``, then GPCCA macrostates, terminal states and fate probabilities, checked
against the simulated time.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import velopyro
from velopyro._validation import VelopyroInputError

slow = pytest.mark.slow


def _row_sums(t) -> np.ndarray:
    return np.asarray(t.sum(1)).ravel()


@pytest.fixture(scope="module")
def cellrank_ready():
    cr = pytest.importorskip("cellrank")
    sc = pytest.importorskip("scanpy")
    sim = velopyro.datasets.simulate(n_cells=600, n_genes=20, seed=0)
    adata = sim[sim.obs["true_t"] < 12].copy()
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=1000, batch_size=128, progress_bar=False, seed=0)  # to convergence, as test_scvelo_compat
    model.write_to_adata(n_samples=10)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    return cr, adata


@slow
def test_velocity_variance_layer(cellrank_ready) -> None:
    """write_to_adata's posterior variance: >= 0, finite, and not constant across cells."""
    _, adata = cellrank_ready
    var = adata.layers["velocity_var"]
    assert var.shape == adata.shape and np.isfinite(var).all() and (var >= 0).all()
    assert (var.std(0) > 0).all()


@slow
def test_cellrank_terminal_states_and_fates(cellrank_ready) -> None:
    cr, adata = cellrank_ready
    t = adata.obs["true_t"].to_numpy()
    vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
    ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
    kernel = 0.8 * vk + 0.2 * ck
    np.testing.assert_allclose(_row_sums(kernel.transition_matrix), 1.0, rtol=1e-6)
    # the walk moves forward in time: the expected true time one step ahead exceeds the cell's own
    step = np.asarray(kernel.transition_matrix @ t).ravel() - t
    assert np.mean(step > 0) > 0.6
    g = cr.estimators.GPCCA(kernel)
    g.compute_schur(n_components=6)
    g.compute_macrostates(n_states=2, cluster_key=None)
    g.predict_terminal_states(method="top_n", n_states=1)
    term = adata.obs["term_states_fwd"]
    cells = term.notna().to_numpy()
    assert cells.sum() > 0
    # the terminal state is made of late cells
    assert np.median(t[cells]) > np.percentile(t, 75)
    g.compute_fate_probabilities(solver="direct")
    fp = np.asarray(g.fate_probabilities)
    assert fp.shape == (adata.n_obs, 1)
    np.testing.assert_allclose(fp.sum(1), 1.0, atol=1e-6)


@slow
def test_cellrank_monte_carlo_with_posterior_variance(cellrank_ready) -> None:
    """CellRank's Monte Carlo model, sampling velocity from velopyro's posterior instead of the neighbours."""
    cr, adata = cellrank_ready
    t = adata.obs["true_t"].to_numpy()
    vk = velopyro.tl.cellrank_velocity_kernel(adata)
    np.testing.assert_allclose(vk._vexp, adata.layers["velocity"], rtol=1e-6)
    np.testing.assert_allclose(vk._vvar, adata.layers["velocity_var"], rtol=1e-6)
    vk.compute_transition_matrix(model="monte_carlo", n_samples=20, seed=0, softmax_scale=4.0)
    tm = vk.transition_matrix
    np.testing.assert_allclose(_row_sums(tm), 1.0, rtol=1e-6)
    step = np.asarray(tm @ t).ravel() - t
    assert np.mean(step > 0) > 0.6
    # CellRank's own Monte Carlo variance (the velocity's spread over the kNN neighbours) is a different model
    own = cr.kernels.VelocityKernel(adata)
    assert not np.allclose(own._vvar, vk._vvar)
    # the deterministic model ignores the variance: the same matrix either way
    det = velopyro.tl.cellrank_velocity_kernel(adata).compute_transition_matrix(softmax_scale=4.0)
    det_own = cr.kernels.VelocityKernel(adata).compute_transition_matrix(softmax_scale=4.0)
    np.testing.assert_allclose(det.transition_matrix.toarray(), det_own.transition_matrix.toarray())
    # more posterior variance -> the Monte Carlo transitions spread over more neighbours (higher entropy)
    def entropy(m) -> np.ndarray:
        m = m.tocsr()
        ent = -m.data * np.log(np.maximum(m.data, 1e-300))
        return np.add.reduceat(ent, m.indptr[:-1]) if m.nnz else np.zeros(m.shape[0])

    gain = entropy(tm) - entropy(det.transition_matrix)
    spread = adata.layers["velocity_var"].sum(1) / np.maximum((adata.layers["velocity"] ** 2).sum(1), 1e-12)
    assert spearmanr(gain, spread)[0] > 0.2


def test_cellrank_velocity_kernel_needs_the_layers() -> None:
    pytest.importorskip("cellrank")
    adata = velopyro.datasets.simulate(n_cells=50, n_genes=5, seed=0)
    with pytest.raises(VelopyroInputError, match="write_to_adata"):
        velopyro.tl.cellrank_velocity_kernel(adata)
