"""ArviZ conversion: groups, dims and coords, chain axis, subsets, memory guard, consistency with the
model's log-likelihood, and LOO / compare on small fits (the fits of ``test_ppc.py``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import velopyro
from velopyro import convert, kinetics
from velopyro.datasets import simulate

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from test_ppc import fit_model, single_thread  # noqa: E402, F401  (tests/ is on sys.path; shared cached fits)

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)


@pytest.fixture(scope="module")
def tiny() -> velopyro.VeloPyro:
    """A quick fit for the mechanics of the conversion (not for its statistics)."""
    adata = simulate(120, 6, seed=3)
    model = velopyro.VeloPyro(adata, n_hidden=16)
    model.fit(max_epochs=3, batch_size=60, progress_bar=False, seed=0)
    return model


def test_groups_dims_coords_and_chain_axis(tiny) -> None:
    idata = convert.to_arviz(tiny, n_samples=7)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood", "constant_data"} <= set(
        idata.groups())
    post = idata.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 7
    assert post["z"].dims == ("chain", "draw", "cell", "latent")
    assert post["pi"].dims == ("chain", "draw", "cell", "gene", "state")
    assert post["time"].dims == ("chain", "draw", "cell", "gene")
    for rate in ("alpha", "beta", "gamma", "t_s", "sigma_u", "sigma_s"):
        assert post[rate].dims == ("chain", "draw", "gene")
        np.testing.assert_allclose(post[rate].values[0, 3], tiny.get_rates()[rate], rtol=1e-6)
    assert list(post["state"].values) == list(kinetics.STATE_NAMES)
    assert list(post["cell"].values) == list(tiny.adata.obs_names)
    assert list(post["gene"].values) == list(tiny.adata.var_names)
    np.testing.assert_allclose(post["pi"].sum("state"), 1.0, rtol=1e-5)
    assert idata.posterior_predictive["u"].dims == ("chain", "draw", "cell", "gene")
    np.testing.assert_array_equal(idata.observed_data["s"].values, tiny.data.s.numpy())
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "cell")
    assert np.isfinite(idata.log_likelihood["obs"].values).all()
    assert idata.constant_data["size_factor_u"].dims == ("cell",)


def test_subsets_options_and_method(tiny) -> None:
    idata = tiny.to_arviz(n_samples=5, per_gene_log_likelihood=True, indices=np.arange(10, 30),
                          genes=["gene1", "gene4"], var_names=["z", "state_probs", "k"],
                          include_posterior_predictive=False)
    assert "posterior_predictive" not in idata.groups()
    assert idata.log_likelihood["obs"].shape == (1, 5, 20, 2)
    assert list(idata.posterior["gene"].values) == ["gene1", "gene4"]
    assert list(idata.posterior["cell"].values) == list(tiny.adata.obs_names[10:30])
    assert idata.posterior["k"].dtype == np.int8
    np.testing.assert_allclose(idata.posterior["state_probs"].sum("state"), 1.0, rtol=1e-5)
    assert set(idata.posterior.data_vars) >= {"z", "state_probs", "k", "alpha"}
    assert "pi" not in idata.posterior
    with pytest.raises(ValueError, match="Unknown var_names"):
        convert.to_arviz(tiny, n_samples=2, var_names=["rho"])
    with pytest.raises(MemoryError, match="GB"):
        convert.to_arviz(tiny, n_samples=10_000, max_gb=0.01)


def test_log_likelihood_is_float64_because_psis_fails_on_float32_near_ties(tiny) -> None:
    """The failure seen on the full pancreas Poisson fit: per-pair log-likelihoods that differ across draws
    only by float32 rounding make ArviZ's PSIS divide by zero (elpd NaN); the same values in float64 do not."""
    rng = np.random.default_rng(0)
    base = np.float32(-0.05)
    near_tied = (base + rng.integers(0, 6, (1, 100, 5)).astype(np.float32) * np.spacing(base)).astype(np.float32)
    posterior = {"a": np.zeros((1, 100))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elpd32, elpd64 = (az.loo(az.from_dict(posterior=posterior, log_likelihood={"obs": near_tied.astype(t)}))
                          .elpd_loo for t in (np.float32, np.float64))
    assert np.isnan(elpd32) and np.isfinite(elpd64)
    for per_gene in (False, True):
        idata = tiny.to_arviz(n_samples=4, per_gene_log_likelihood=per_gene, var_names=["z"],
                              include_posterior_predictive=False)
        assert idata.log_likelihood["obs"].dtype == np.float64
    assert convert.estimate_nbytes(tiny, 4, ["z"], 10, 6, False, True) == 4 * 10 * (4 * 10 + 8 * 6)


def test_log_likelihood_is_the_models(tiny) -> None:
    """With pi at its posterior draw the group equals VeloPyro.get_log_likelihood (same draws)."""
    idata = convert.to_arviz(tiny, n_samples=4, var_names=["z"], include_posterior_predictive=False,
                             log_likelihood_pi="posterior", seed=5)
    ref = tiny.get_log_likelihood(n_samples=4, seed=5)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], ref, rtol=1e-5, atol=1e-3)
    # pi integrated over its prior (the default) is a different, smoother function of z
    prior = convert.to_arviz(tiny, n_samples=4, var_names=["z"], include_posterior_predictive=False, seed=5)
    np.testing.assert_allclose(prior.posterior["z"].values, idata.posterior["z"].values)
    assert not np.allclose(prior.log_likelihood["obs"].values, idata.log_likelihood["obs"].values)


def test_reproducible_with_seed(tiny) -> None:
    a = convert.to_arviz(tiny, n_samples=3, seed=1)
    b = convert.to_arviz(tiny, n_samples=3, seed=1)
    np.testing.assert_array_equal(a.posterior_predictive["s"].values, b.posterior_predictive["s"].values)


def test_arviz_1x_branch_builds_one_nested_dict(tiny, monkeypatch) -> None:
    """ArviZ >= 1 (DataTree) is not installable on Python 3.11: check the call it would receive."""
    captured = {}

    def fake_from_dict(data, **kwargs):
        captured["data"], captured["kwargs"] = data, kwargs
        return "datatree"

    monkeypatch.setattr(convert, "_arviz_major", lambda: 1)
    monkeypatch.setattr(az, "from_dict", fake_from_dict)
    assert convert.to_arviz(tiny, n_samples=2, var_names=["z"]) == "datatree"
    groups = captured["data"]
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(groups)
    assert groups["posterior"]["z"].shape[:2] == (1, 2)  # chain, draw
    assert captured["kwargs"]["dims"]["obs"] == ["cell"]


# ---- LOO on the small fits of test_ppc -------------------------------------------------------------
def _loo(model: velopyro.VeloPyro, per_gene: bool, n_samples: int = 200):
    idata = model.to_arviz(n_samples=n_samples, per_gene_log_likelihood=per_gene, var_names=["z"],
                           include_posterior_predictive=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = az.loo(idata, pointwise=True)
    return idata, loo, [str(w.message) for w in caught]


def loo_metrics(fit_seed: int = 0) -> dict:
    """PSIS-LOO of the NB fit to NB counts, per (cell, gene) pair and per cell."""
    model = fit_model("negative_binomial", "negative_binomial", fit_seed=fit_seed)
    _, loo_pair, _ = _loo(model, per_gene=True)
    _, loo_cell, _ = _loo(model, per_gene=False)
    k_pair = loo_pair.pareto_k.values.ravel()
    return {"loo_pair": loo_pair, "loo_cell": loo_cell, "p_loo_share": float(loo_pair.p_loo / k_pair.size),
            "share_k_above_0.7": float(np.mean(k_pair > 0.7))}


def compare_metrics(fit_seed: int = 0):
    """az.compare of the NB and Poisson fits to NB counts (per-pair LOO)."""
    loos = {name: _loo(fit_model("negative_binomial", name, fit_seed=fit_seed), per_gene=True)[1]
            for name in ("negative_binomial", "poisson")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.compare(loos)


@pytest.mark.slow
def test_loo_runs_on_a_well_specified_fit_and_reports_pareto_k() -> None:
    m = loo_metrics()
    loo_pair, loo_cell = m["loo_pair"], m["loo_cell"]
    k_pair = loo_pair.pareto_k.values.ravel()
    k_cell = loo_cell.pareto_k.values.ravel()
    print(f"NB on NB: per (cell, gene) elpd {loo_pair.elpd_loo:.1f}, p_loo {loo_pair.p_loo:.1f}, "
          f"k > 0.7 for {100 * np.mean(k_pair > 0.7):.1f}%; per cell elpd {loo_cell.elpd_loo:.1f}, "
          f"k > 0.7 for {100 * np.mean(k_cell > 0.7):.1f}%")
    assert np.isfinite(loo_pair.elpd_loo) and np.isfinite(loo_cell.elpd_loo)
    assert k_pair.size == 500 * 30 and k_cell.size == 500
    assert 0 < loo_pair.p_loo < 0.1 * k_pair.size  # an effective number of parameters, not a blow-up
    # Honest bound, not "no warning": PSIS flags some pairs even for a well-specified fit (the
    # variational q(z | u, s) is not the exact posterior), and most cells (each has its own z).
    assert np.mean(k_pair > 0.7) < 0.25


@pytest.mark.slow
def test_compare_prefers_the_true_likelihood() -> None:
    cmp = compare_metrics()
    print(cmp[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse"]])
    assert cmp.index[0] == "negative_binomial"
    assert cmp["elpd_diff"].iloc[1] > 4 * cmp["dse"].iloc[1]


def test_to_arviz_does_not_change_the_model_state(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    convert.to_arviz(tiny, n_samples=2)
    for k, v in tiny.model.state_dict().items():
        assert torch.equal(v, before[k])
