"""velopyro.datasets.simulate_branching: an independent, branching generator with ground truth."""

import numpy as np
import pytest

from velopyro.datasets import simulate_branching


@pytest.fixture(scope="module")
def sim():
    return simulate_branching(n_cells=600, n_genes=40, seed=3)


def test_shapes_and_keys(sim):
    assert sim.shape == (600, 40)
    for key in ("spliced", "unspliced", "Ms", "Mu", "true_velocity", "true_t", "true_u", "true_s"):
        assert sim.layers[key].shape == (600, 40), key
    for key in ("true_alpha", "true_beta", "true_gamma", "true_ratio"):
        assert np.all(np.isfinite(sim.var[key])) and np.all(sim.var[key] > 0), key
    assert list(sim.obs["lineage"].cat.categories) == ["progenitor", "lineage0", "lineage1"]
    assert set(sim.obs["lineage"]) == {"progenitor", "lineage0", "lineage1"}
    t = sim.obs["true_t"].to_numpy()
    np.testing.assert_array_equal(sim.layers["true_t"], np.repeat(t[:, None], 40, axis=1))
    # the same clock: every progenitor cell is earlier than every lineage cell
    prog = (sim.obs["lineage"] == "progenitor").to_numpy()
    assert t[prog].max() <= t[~prog].min()
    assert sim.obsm["X_umap"].shape == (600, 2)
    clusters = set(sim.obs["clusters"].cat.categories)
    assert len(clusters) == 9
    assert all(len(pair) == 2 and set(pair) <= clusters for pair in sim.uns["transitions"])
    assert ["progenitor_2", "lineage0_0"] in sim.uns["transitions"]
    ratio = sim.var["true_gamma"] / sim.var["true_beta"]
    assert not np.allclose(sim.var["true_ratio"], ratio)  # in the scaled layers' units


def test_counts_integers_and_scaled_layers(sim):
    for key in ("spliced", "unspliced"):
        x = sim.layers[key]
        assert np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.sum() > 0
    for key in ("Ms", "Mu"):
        x = sim.layers[key]
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_allclose(x.max(axis=0), 1.0, atol=1e-6)


def test_reproducible_for_a_seed():
    state = np.random.get_state()  # noqa: NPY002
    a = simulate_branching(n_cells=200, n_genes=12, seed=5, noise="normal")
    b = simulate_branching(n_cells=200, n_genes=12, seed=5, noise="normal")
    c = simulate_branching(n_cells=200, n_genes=12, seed=6, noise="normal")
    for key in ("Ms", "Mu", "spliced", "true_velocity"):
        np.testing.assert_array_equal(a.layers[key], b.layers[key])
    np.testing.assert_array_equal(a.obsm["X_umap"], b.obsm["X_umap"])
    assert not np.array_equal(a.layers["Ms"], c.layers["Ms"])
    new_state = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(x, y) for x, y in zip(state[1:3], new_state[1:3], strict=True))  # global untouched


def test_velocity_sign_matches_finite_difference(sim):
    t = sim.obs["true_t"].to_numpy()
    for lineage in sim.obs["lineage"].cat.categories:
        cells = np.flatnonzero((sim.obs["lineage"] == lineage).to_numpy())
        cells = cells[np.argsort(t[cells])]
        s = sim.layers["true_s"][cells]  # noiseless abundance: a positive multiple of noiseless Ms plus offset
        v = sim.layers["true_velocity"][cells]
        dt = np.diff(t[cells])
        keep = dt > 1e-6
        fd = np.diff(s, axis=0)[keep] / dt[keep, None]
        v_mid = ((v[1:] + v[:-1]) / 2)[keep]
        clear = np.abs(v_mid) > 0.02 * np.abs(v).max(axis=0)
        agree = (np.sign(fd) == np.sign(v_mid))[clear].mean()
        assert agree > 0.99, (lineage, agree)


def test_gene_induced_in_one_lineage_repressed_in_another(sim):
    lin = sim.obs["lineage"].to_numpy()
    t = sim.obs["true_t"].to_numpy()
    s = sim.layers["true_s"]
    at_branch = s[lin == "progenitor"][np.argmax(t[lin == "progenitor"])]
    late = {name: s[(lin == name) & (t > np.quantile(t[lin == name], 0.8))].mean(axis=0)
            for name in ("lineage0", "lineage1")}
    up0_down1 = (late["lineage0"] > 1.2 * at_branch) & (late["lineage1"] < 0.8 * at_branch)
    up1_down0 = (late["lineage1"] > 1.2 * at_branch) & (late["lineage0"] < 0.8 * at_branch)
    assert up0_down1.any() and up1_down0.any()
    assert (sim.var["program"][up0_down1 | up1_down0] == "switch").all()


def test_options_and_errors():
    sim = simulate_branching(n_cells=150, n_genes=10, n_lineages=3, dispersion=4.0, seed=1)
    assert sim.obs["lineage"].cat.categories[-1] == "lineage2"
    assert len(sim.uns["transitions"]) == 2 + 3 * 3
    with pytest.raises(ValueError, match="n_lineages"):
        simulate_branching(n_cells=10, n_genes=4, n_lineages=1)
    with pytest.raises(ValueError, match="noise"):
        simulate_branching(n_cells=10, n_genes=4, noise="gamma")
