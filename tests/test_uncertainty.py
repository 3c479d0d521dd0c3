"""veloVI's uncertainty read-outs: velocity draws, directional uncertainty, permutation scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from sklearn.metrics import roc_auc_score

import velopyro
from velopyro import uncertainty
from velopyro._validation import VelopyroInputError

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)


def _knn(x: np.ndarray, k: int = 10) -> sp.csr_matrix:
    from scipy.spatial import cKDTree

    _, idx = cKDTree(x).query(x, k=k + 1)
    rows = np.repeat(np.arange(len(x)), k)
    g = sp.csr_matrix((np.ones(len(rows)), (rows, idx[:, 1:].ravel())), shape=(len(x), len(x)))
    return sp.csr_matrix(((g + g.T) > 0).astype(np.float64))


def test_directional_statistics_known_values() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 8))
    same = np.repeat(base[None], 5, axis=0)  # every draw identical: no spread
    out = uncertainty.directional_statistics(same)
    np.testing.assert_allclose(out["directional_cosine_sim_mean"], 1.0)
    np.testing.assert_allclose(out["directional_cosine_sim_variance"], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["directional_variance"], 0.0, atol=1e-6)
    # five draws along +w, four along -w: the mean is w / 9, the cosines +1 and -1 (variance 1 - 1/81)
    w = rng.standard_normal(8)
    flip = np.stack([w if i < 5 else -w for i in range(9)])[:, None, :]
    out = uncertainty.directional_statistics(flip)
    assert out["directional_cosine_sim_variance"][0] > 0.9  # cosines of +-1: variance 1
    assert out["directional_cosine_sim_difference"][0] > 1.8
    zero = uncertainty.directional_statistics(np.zeros((4, 2, 5)))
    assert np.all(np.isfinite(zero["directional_variance"]))


@pytest.fixture(scope="module")
def small():
    adata = velopyro.datasets.simulate(n_cells=200, n_genes=12, seed=0)
    adata.obs["type"] = np.where(adata.obs["true_t"] < 10, "early", "late")
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=5, batch_size=64, progress_bar=False, seed=0)
    return adata, model


def test_velocity_draws_shape_and_mean(small) -> None:
    adata, model = small
    draws = model.get_velocity(n_samples=4, return_samples=True, batch_size=64, seed=3)
    assert draws.shape == (4, adata.n_obs, adata.n_vars) and draws.dtype == np.float32
    mean = model.get_velocity(n_samples=4, batch_size=64, seed=3)
    np.testing.assert_allclose(draws.mean(0), mean, rtol=1e-4, atol=1e-6)
    assert np.abs(draws[0] - draws[1]).max() > 0  # the draws differ


def test_streamed_uncertainty_equals_dense(small) -> None:
    """The batch-streamed statistics equal those of the full draws x cells x genes tensor."""
    adata, model = small
    df = model.get_directional_uncertainty(n_samples=6, batch_size=64, seed=5)
    draws = model.get_velocity(n_samples=6, return_samples=True, batch_size=64, seed=5, state_weights="posterior")
    dense = uncertainty.directional_statistics(draws)
    for k in uncertainty.STAT_NAMES:
        np.testing.assert_allclose(df[k].to_numpy(), dense[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(adata.obs[k].to_numpy(), dense[k], rtol=1e-4, atol=1e-5)
    assert list(df.index) == list(adata.obs_names)
    # with state_weights="pi" the draws are get_velocity's default ones
    by_pi = model.get_directional_uncertainty(n_samples=6, batch_size=64, seed=5, state_weights="pi", write=False)
    dense_pi = uncertainty.directional_statistics(model.get_velocity(n_samples=6, return_samples=True,
                                                                     batch_size=64, seed=5))
    np.testing.assert_allclose(by_pi["directional_cosine_sim_mean"].to_numpy(),
                               dense_pi["directional_cosine_sim_mean"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(by_pi["directional_cosine_sim_mean"], df["directional_cosine_sim_mean"])
    with pytest.raises(VelopyroInputError, match="n_samples"):
        model.get_directional_uncertainty(n_samples=1)
    with pytest.raises(VelopyroInputError, match="state_weights"):
        model.get_directional_uncertainty(n_samples=3, state_weights="prior")


def test_extrinsic_uncertainty(small) -> None:
    adata, model = small
    with pytest.raises(VelopyroInputError, match="connectivities"):
        model.get_directional_uncertainty(n_samples=3, extrinsic=True, write=False)
    adata.obsp["connectivities"] = _knn(adata.layers["Ms"])
    df = model.get_directional_uncertainty(n_samples=3, extrinsic=True, n_extrinsic_samples=3)
    mean = df["directional_cosine_sim_mean_extrinsic"].to_numpy()
    assert np.all((mean >= -1) & (mean <= 1)) and np.all(np.isfinite(df.to_numpy()))
    assert "directional_variance_extrinsic" in adata.obs
    assert df["directional_cosine_sim_variance_extrinsic"].std() > 0


def test_permutation_scores_keys_and_errors(small) -> None:
    adata, model = small
    with pytest.raises(VelopyroInputError, match="labels_key"):
        model.get_permutation_scores("nope")
    assert "permutation_scores" not in adata.varm  # a failure writes nothing
    df = model.get_permutation_scores("type", n_samples=2)
    assert df.shape == (adata.n_vars, 2) and list(df.columns) == ["early", "late"]
    np.testing.assert_allclose(adata.varm["permutation_scores"], df.to_numpy(), rtol=1e-6)
    assert adata.uns["permutation_scores"]["cell_types"] == ["early", "late"]
    again = model.get_permutation_scores("type", n_samples=2, write=False)
    np.testing.assert_allclose(again.to_numpy(), df.to_numpy())  # seeded: reproducible
    assert adata.uns["permutation_scores"]["max_cells"] == -1
    # a cap at or above every type's size scores every cell: the same scores
    n_max = int(adata.obs["type"].value_counts().max())
    np.testing.assert_allclose(model.get_permutation_scores("type", n_samples=2, write=False,
                                                            max_cells=n_max).to_numpy(), df.to_numpy())
    # a smaller cap scores fewer cells: |t| shrinks (about with the square root of the cells)
    capped = model.get_permutation_scores("type", n_samples=2, max_cells=20)
    assert adata.uns["permutation_scores"]["max_cells"] == 20
    assert np.nanmedian(np.abs(capped.to_numpy())) < np.nanmedian(np.abs(df.to_numpy()))
    for bad in (1, 2.5, "200"):
        with pytest.raises(VelopyroInputError, match="max_cells"):
            model.get_permutation_scores("type", max_cells=bad)


def build_shuffled_type_fit(seed: int = 0):
    """Four cell types cut on the clock, type b's u and s shuffled per gene; the fit (``seed``: the fit's)."""
    adata = velopyro.datasets.simulate(n_cells=400, n_genes=20, seed=0)
    rng = np.random.default_rng(1)
    types = np.digitize(adata.obs["true_t"], [5, 10, 15])
    adata.obs["type"] = np.array(["a", "b", "c", "d"])[types]
    shuffled = types == 1
    for key in ("Mu", "Ms"):
        sub = adata.layers[key][shuffled]
        adata.layers[key][shuffled] = sub[np.argsort(rng.random(sub.shape), axis=0), np.arange(sub.shape[1])]
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=100, batch_size=128, progress_bar=False, seed=seed)
    return adata, model


def shuffled_type_metrics(fit) -> dict[str, float]:
    _, model = fit
    scores = model.get_permutation_scores("type")
    is_b = np.broadcast_to(scores.columns.to_numpy() == "b", scores.shape).ravel()
    return {"auc": float(roc_auc_score(is_b, -scores.to_numpy().ravel())),
            "median_b": float(scores["b"].median()), "min_median_other": float(scores.drop(columns="b").median().min())}


@pytest.mark.slow
def test_permutation_score_finds_a_cell_type_without_kinetics() -> None:
    """Ground truth: one of four cell types has u and s shuffled per gene (no kinetics): its permutation
    scores are the lowest (measured AUC 0.995; the scores' median 0.03 there vs 4.6-10.9 elsewhere)."""
    m = shuffled_type_metrics(build_shuffled_type_fit())
    assert m["auc"] >= 0.9, m
    assert m["median_b"] < 0.5 * m["min_median_other"], m


def _steady_type(seed: int) -> tuple:
    """Simulated cells in four types cut on the clock; type b held at each gene's induction steady state
    (u = alpha / beta, s = alpha / gamma, the simulator's noise): no kinetics, no direction there."""
    adata = velopyro.datasets.simulate(n_cells=400, n_genes=20, seed=seed)
    rng = np.random.default_rng([seed, 101])  # as benchmarks/uncertainty_groundtruth.py: seed 0 is its row
    types = np.digitize(adata.obs["true_t"], [5, 10, 15])
    adata.obs["type"] = np.array(["a", "b", "c", "d"])[types]
    steady = types == 1
    a, b, g = (adata.var[f"true_{k}"].to_numpy() for k in ("alpha", "beta", "gamma"))
    for key, m, mean in (("Mu", "u", a / b), ("Ms", "s", a / g)):
        noise = adata.var[f"true_sigma_{m}"].to_numpy() * rng.standard_normal((steady.sum(), adata.n_vars))
        adata.layers[key][steady] = np.clip(mean + noise, 0.0, None)
    return adata, steady


@pytest.mark.slow
def test_uncertainty_and_permutation_score_flag_a_cell_type_at_steady_state() -> None:
    """Ground truth: a cell type whose data hold no direction gets the highest intrinsic uncertainty and
    the lowest permutation scores. Over 5 seeds (``python -m benchmarks.uncertainty_groundtruth flags``)
    the cosine variance's AUC was 0.96-0.99 with the default state weights and 0.20-0.48 with ``pi``
    (whose Dirichlet draws mix induction and repression in every cell); the permutation score's 0.92-0.98."""
    m = steady_type_metrics(build_steady_type_fit())
    assert m["auc_cosine_variance"] >= 0.9, m
    assert m["auc_cosine_mean"] >= 0.9, m
    assert m["auc_permutation"] >= 0.9, m


def build_steady_type_fit(seed: int = 0):
    """The steady-state cell type (data seed 0) and its fit (``seed``: the fit's)."""
    adata, steady = _steady_type(seed=0)
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=100, batch_size=128, progress_bar=False, seed=seed)
    return steady, model


def steady_type_metrics(fit) -> dict[str, float]:
    steady, model = fit
    unc = model.get_directional_uncertainty(n_samples=30, write=False)
    scores = model.get_permutation_scores("type", write=False)
    is_b = np.broadcast_to(scores.columns.to_numpy() == "b", scores.shape).ravel()
    return {"auc_cosine_variance": float(roc_auc_score(steady, unc["directional_cosine_sim_variance"])),
            "auc_cosine_mean": float(roc_auc_score(steady, -unc["directional_cosine_sim_mean"])),
            "auc_permutation": float(roc_auc_score(is_b, -scores.to_numpy().ravel()))}


def test_figures_show_the_data(small) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata, model = small
    model.get_directional_uncertainty(n_samples=3)
    model.get_permutation_scores("type", n_samples=2)
    adata.obsm["X_umap"] = adata.layers["Ms"][:, :2].astype(np.float64)
    fig, ax = plt.subplots()
    out = velopyro.pl.uncertainty(adata, color="directional_cosine_sim_mean", ax=ax, show=False)
    assert out is fig
    pts = ax.collections[0]
    val = adata.obs["directional_cosine_sim_mean"].to_numpy()
    np.testing.assert_allclose(np.sort(pts.get_array().data), np.sort(val), rtol=1e-6)
    assert pts.get_offsets().shape == (adata.n_obs, 2)
    fig2 = velopyro.pl.permutation_scores(adata, color="tab:red", show=False)
    ax2 = fig2.axes[0]
    medians = [line.get_ydata()[0] for line in ax2.lines if len(line.get_xdata()) == 2
               and line.get_color() != "0.5" and line.get_linestyle() == "-"]
    expected = np.median(adata.varm["permutation_scores"], axis=0)
    assert all(any(np.isclose(m, e) for m in medians) for e in expected)
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["early", "late"]
    assert len(ax2.patches) == 2
    with pytest.raises(VelopyroInputError, match="one per type"):
        velopyro.pl.permutation_scores(adata, color=["r", "g", "b"])
    with pytest.raises(VelopyroInputError, match="get_directional_uncertainty"):
        velopyro.pl.uncertainty(adata, color="nope")
    plt.close("all")


# ---- posterior intervals of velocity and their coverage ------------------------------------------------------


def test_interval_coverage_is_nominal_for_a_calibrated_interval_and_lower_for_an_overconfident_one() -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(400, 30))
    draws = mu + rng.normal(size=(200, 400, 30))  # the "posterior" of each entry: Normal(mu, 1)
    truth = mu + rng.normal(size=(400, 30))       # the truth drawn from that same distribution
    over = mu + 0.5 * rng.normal(size=(200, 400, 30))  # an over-confident posterior: half the spread
    cov, cov_over = [], []
    for level in (0.5, 0.8, 0.9, 0.95):
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        cov.append(uncertainty.interval_coverage(lo, hi, truth))
        assert abs(cov[-1] - level) < 0.03, (level, cov[-1])
        per_gene = uncertainty.interval_coverage(lo, hi, truth, axis=0)
        assert per_gene.shape == (30,) and abs(np.median(per_gene) - level) < 0.05
        lo, hi = np.quantile(over, [(1 - level) / 2, (1 + level) / 2], axis=0)
        cov_over.append(uncertainty.interval_coverage(lo, hi, truth))
    assert np.all(np.diff(cov) > 0)
    # half the spread: the 90% interval is +-0.82 sd of the truth, which covers ~59%
    assert abs(cov_over[2] - 0.59) < 0.03 and np.all(np.array(cov_over) < np.array(cov) - 0.1)
    nan_truth = truth.copy()
    nan_truth[:, 0] = np.nan  # NaN truths are left out, not counted as misses
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    assert abs(uncertainty.interval_coverage(lo, hi, nan_truth) - 0.9) < 0.03
    with pytest.raises(VelopyroInputError, match="one shape"):
        uncertainty.interval_coverage(lo, hi, truth[:10])
    with pytest.raises(VelopyroInputError, match="lower exceeds upper"):
        uncertainty.interval_coverage(hi, lo, truth)


def test_velocity_interval_of_the_fit(small) -> None:
    adata, model = small
    draws = model.get_velocity(n_samples=8, return_samples=True, batch_size=64, seed=5)
    lo90, hi90 = model.get_velocity_interval(level=0.9, n_samples=8, batch_size=64, seed=5, write=False)
    # streamed over batches of cells = the quantiles of the dense draws with the same seed
    np.testing.assert_allclose(lo90, np.quantile(draws, 0.05, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(hi90, np.quantile(draws, 0.95, axis=0), rtol=1e-5, atol=1e-7)
    post = model.get_velocity(n_samples=8, return_samples=True, batch_size=64, seed=5, state_weights="posterior")
    lo_p, _ = model.get_velocity_interval(level=0.9, n_samples=8, batch_size=64, seed=5, write=False,
                                          state_weights="posterior")
    np.testing.assert_allclose(lo_p, np.quantile(post, 0.05, axis=0), rtol=1e-5, atol=1e-7)
    lo50, hi50 = model.get_velocity_interval(level=0.5, n_samples=8, batch_size=64, seed=5)
    assert np.all(lo90 <= lo50) and np.all(hi50 <= hi90) and np.mean(hi90 - lo90 > hi50 - lo50) > 0.9
    np.testing.assert_array_equal(adata.layers["velocity_lower"], lo50)
    assert adata.uns["velocity_interval"] == {"level": 0.5, "n_samples": 8, "mode": "spliced",
                                              "state_weights": "pi"}
    truth = adata.layers["true_velocity"]
    c50, c90 = (uncertainty.interval_coverage(a, b, truth) for a, b in ((lo50, hi50), (lo90, hi90)))
    assert c50 <= c90
    mid = 0.5 * (lo90 + hi90)  # the 90% interval shrunk to a tenth around its centre covers less
    assert uncertainty.interval_coverage(mid + 0.1 * (lo90 - mid), mid + 0.1 * (hi90 - mid), truth) < c90
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(VelopyroInputError, match="level must lie"):
            model.get_velocity_interval(level=bad, n_samples=2)
    with pytest.raises(VelopyroInputError, match="n_samples must be >= 2"):
        model.get_velocity_interval(n_samples=1)
