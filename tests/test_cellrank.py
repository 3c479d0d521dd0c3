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


def build_cellrank_ready(seed: int = 0):
    """The ``cellrank_ready`` fixture (``seed``: the fit's; benchmarks/test_thresholds.py varies it)."""
    cr = pytest.importorskip("cellrank")
    sc = pytest.importorskip("scanpy")
    sim = velopyro.datasets.simulate(n_cells=600, n_genes=20, seed=0)
    adata = sim[sim.obs["true_t"] < 12].copy()
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=1000, batch_size=128, progress_bar=False, seed=seed)  # to convergence, as test_scvelo_compat
    model.write_to_adata(n_samples=10)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    return cr, adata


@pytest.fixture(scope="module")
def cellrank_ready():
    return build_cellrank_ready()


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
    g.predict_initial_states(n_states=1)
    term = adata.obs["term_states_fwd"].notna().to_numpy()
    init = adata.obs["init_states_fwd"].notna().to_numpy()
    assert term.sum() > 0 and init.sum() > 0
    # the initial state is made of early cells, the terminal state of later ones (measured: median true time
    # 1.4 and 7.7 of 0-12; GPCCA assigns each macrostate its 30 most-member cells, and on this simulation the
    # late cells' kNN neighbourhoods mix in earlier ones), and membership of the terminal state rises with time
    # (Spearman 0.70)
    assert np.median(t[init]) < np.percentile(t, 25)
    assert np.median(t[term]) > np.median(t)
    memb = g.macrostates_memberships
    name = adata.obs["term_states_fwd"].cat.categories[0]
    assert spearmanr(np.asarray(memb[name]).ravel(), t)[0] > 0.5
    g.compute_fate_probabilities()
    fp = np.asarray(g.fate_probabilities)
    assert fp.shape == (adata.n_obs, 1)
    np.testing.assert_allclose(fp.sum(1), 1.0, atol=1e-4)  # the iterative solver's tolerance


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
    # the Monte Carlo model samples velopyro's variance: more of it, more uniform transitions (mean row entropy
    # rises from the deterministic model through the posterior variance to 25 times it)
    def mean_entropy(m) -> float:
        m = m.tocsr()
        return float(-(m.data * np.log(np.maximum(m.data, 1e-300))).sum() / m.shape[0])

    wide = adata.copy()
    wide.layers["velocity_var"] = 25.0 * adata.layers["velocity_var"]
    vk_wide = velopyro.tl.cellrank_velocity_kernel(wide)
    vk_wide.compute_transition_matrix(model="monte_carlo", n_samples=20, seed=0, softmax_scale=4.0)
    ent = [mean_entropy(det.transition_matrix), mean_entropy(tm), mean_entropy(vk_wide.transition_matrix)]
    assert ent[0] < ent[1] < ent[2]


def test_cellrank_velocity_kernel_needs_the_layers() -> None:
    pytest.importorskip("cellrank")
    adata = velopyro.datasets.simulate(n_cells=50, n_genes=5, seed=0)
    with pytest.raises(VelopyroInputError, match="write_to_adata"):
        velopyro.tl.cellrank_velocity_kernel(adata)
