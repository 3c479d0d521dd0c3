"""The AnnData-facing class: recovery on simulated data, outputs, save/load, seeds, errors."""

import numpy as np
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from scipy.stats import spearmanr

import velopyro
from velopyro import VeloPyro
from velopyro._validation import VelopyroInputError
from velopyro.datasets import simulate
from velopyro.train import TrainingDivergedError

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)


def build_sim():
    return simulate(n_cells=500, n_genes=30, seed=1)


def build_fitted(sim, seed: int = 0) -> VeloPyro:
    """The ``fitted`` fixture's fit (``seed``: the fit's; benchmarks/test_thresholds.py varies it)."""
    model = VeloPyro(sim, state_coupling="independent")
    model.fit(max_epochs=150, batch_size=128, progress_bar=False, seed=seed)
    return model


def recovery_metrics(sim, fitted) -> dict[str, float]:
    """What test_recovers_latent_time_and_states asserts on, from one fit."""
    lt = fitted.get_latent_time(n_samples=10)
    rho = [spearmanr(lt[:, g], sim.layers["true_t"][:, g])[0] for g in range(sim.n_vars)]
    cell = fitted.get_latent_time(level="cell")
    states = fitted.get_state_assignment(hard=True)
    rates = fitted.get_rates()
    ratio_true = sim.var["true_gamma"] / sim.var["true_beta"]
    v = fitted.get_velocity(n_samples=10)
    return {"gene_time_median_spearman": float(np.nanmedian(rho)),
            "cell_time_spearman": float(spearmanr(cell, sim.obs["true_t"])[0]),
            "state_accuracy": float((states == sim.layers["true_state"]).mean()),
            "gamma_beta_spearman": float(spearmanr(rates["gamma"] / rates["beta"], ratio_true)[0]),
            "velocity_sign_accuracy": float((np.sign(v) == np.sign(sim.layers["true_velocity"])).mean())}


@pytest.fixture(scope="module")
def sim():
    return build_sim()


@pytest.fixture(scope="module")
def fitted(sim):
    return build_fitted(sim)


@pytest.mark.slow
def test_recovers_latent_time_and_states(sim, fitted):
    m = recovery_metrics(sim, fitted)
    # per gene, time is only identifiable where the phase portrait is not saturated; most genes are
    assert m["gene_time_median_spearman"] > 0.6, m
    assert m["cell_time_spearman"] > 0.8, m
    assert m["state_accuracy"] > 0.6, m  # chance is at most 0.45 (the largest true state's share)
    assert np.bincount(sim.layers["true_state"].ravel()).max() / sim.layers["true_state"].size < 0.5
    assert m["gamma_beta_spearman"] > 0.8, m  # gamma/beta is identifiable
    assert m["velocity_sign_accuracy"] > 0.7, m


@pytest.mark.slow
def test_output_shapes_and_probabilities(fitted):
    n, g = fitted.n_cells, fitted.n_genes
    p = fitted.get_state_assignment(n_samples=3)
    assert p.shape == (n, g, 4)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert fitted.get_velocity(n_samples=2, mode="unspliced").shape == (n, g)
    v_max = fitted.get_velocity(n_samples=2, statistic="max", clip=True)
    assert (v_max >= -fitted.data.s.numpy() - 1e-6).all()
    assert fitted.get_latent_representation().shape == (n, 10)
    fu, fs = fitted.get_expression_fit(n_samples=2)
    assert fu.shape == fs.shape == (n, g)
    rates = fitted.get_rates()
    assert {"alpha", "beta", "gamma", "t_s", "sigma_u", "sigma_s"} <= set(rates)
    assert (rates["t_s"] > 0).all() and (rates["t_s"] < 20).all()
    ll = fitted.get_log_likelihood(n_samples=2, indices=fitted.validation_indices)
    assert ll.shape == (2, len(fitted.validation_indices)) and np.isfinite(ll).all()


@pytest.mark.slow
def test_batched_outputs_do_not_depend_on_batch_size(fitted):
    a = fitted.get_latent_representation(batch_size=7)
    b = fitted.get_latent_representation(batch_size=500)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_write_to_adata_scvelo_keys(sim, fitted):
    out = fitted.write_to_adata(sim, n_samples=2, copy=True)
    for key in ("velocity", "velocity_u", "fit_t", "fit_state"):
        assert out.layers[key].shape == sim.shape
    for key in ("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "velocity_genes"):
        assert key in out.var
    assert "latent_time" in out.obs and "X_velopyro" in out.obsm
    assert "velocity" not in sim.layers  # copy=True leaves the input alone
    # the written keys are the getters' defaults: velocity weighted by pi, time and states by p(k | data)
    assert out.uns["velopyro"]["state_weights"] == {"velocity": "pi", "latent_time": "posterior",
                                                   "fit_state": "posterior"}
    v_pi = fitted.get_velocity(n_samples=2, state_weights="pi")
    np.testing.assert_allclose(out.layers["velocity"], fitted.get_velocity(n_samples=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.layers["velocity"], v_pi, rtol=1e-5, atol=1e-6)
    assert not np.allclose(v_pi, fitted.get_velocity(n_samples=2, state_weights="posterior"), rtol=1e-3)
    np.testing.assert_allclose(out.layers["fit_t"], fitted.get_latent_time(n_samples=2, state_weights="posterior"),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.layers["fit_state"],
                                  fitted.get_state_assignment(n_samples=2, state_weights="posterior").argmax(-1))


@pytest.mark.slow
def test_save_load_round_trip_exact(sim, fitted, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = VeloPyro.load(tmp_path / "m", sim)
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=3), fitted.get_velocity(n_samples=3))
    np.testing.assert_array_equal(loaded.get_latent_time(n_samples=3), fitted.get_latent_time(n_samples=3))
    for k, v in fitted.get_rates().items():
        np.testing.assert_array_equal(loaded.get_rates()[k], v)
    assert loaded.history["validation_loss"] == fitted.history["validation_loss"]
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "m")


def test_same_seed_same_result(sim):
    small = sim[:200, :10].copy()
    runs = []
    for _ in range(2):
        m = VeloPyro(small, n_hidden=32)
        m.fit(max_epochs=3, batch_size=64, progress_bar=False, seed=7)
        runs.append((m.history["train_loss"], m.get_velocity(n_samples=2)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    m = VeloPyro(small, n_hidden=32)
    m.fit(max_epochs=3, batch_size=64, progress_bar=False, seed=8)
    assert m.history["train_loss"] != runs[0][0]


def test_fewer_cells_than_batch_trains_on_all_training_cells(sim):
    small = sim[:50].copy()
    m = VeloPyro(small, n_hidden=16).fit(max_epochs=1, progress_bar=False)
    assert m.history["batch_size"] == len(m.train_indices) == 45


def test_diverging_loss_raises_with_epoch(sim, monkeypatch):
    m = VeloPyro(sim[:100, :5].copy(), n_hidden=16)
    import velopyro.likelihoods as L

    def broken(self, mean, state, modality, size_factor=None):
        return L.dist.Normal(mean * float("nan"), 1.0)

    monkeypatch.setattr(L.Normal, "dist", broken)
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        m.fit(max_epochs=2, batch_size=32, progress_bar=False)
    assert not m.is_trained
    with pytest.raises(RuntimeError, match="not fitted"):
        m.get_velocity()


def test_unfitted_and_bad_options(sim):
    with pytest.raises(ValueError, match="state_coupling"):
        VeloPyro(sim, state_coupling="both")
    with pytest.raises(ValueError, match="pi_guide"):
        VeloPyro(sim, pi_guide="beta")
    with pytest.raises(ValueError, match="Unknown likelihood"):
        VeloPyro(sim, likelihood="gamma")
    with pytest.raises(VelopyroInputError, match="non-integer"):
        VeloPyro(sim, "Ms", "Mu", likelihood="poisson")


def test_input_anndata_not_modified(sim):
    before = {k: v.copy() for k, v in sim.layers.items()}
    keys = (set(sim.obs), set(sim.var), set(sim.uns), set(sim.obsm))
    m = VeloPyro(sim, n_hidden=16)
    m.fit(max_epochs=1, progress_bar=False)
    m.get_velocity(n_samples=1)
    for k, v in before.items():
        np.testing.assert_array_equal(sim.layers[k], v)
    assert keys == (set(sim.obs), set(sim.var), set(sim.uns), set(sim.obsm))



def test_likelihood_instance_not_modified(sim):
    """The model builds and fits a copy of a likelihood instance: the caller's object gets no parameters."""
    lik = velopyro.likelihoods.Normal()
    m = VeloPyro(sim[:60].copy(), likelihood=lik, n_hidden=16)
    m.fit(max_epochs=1, progress_bar=False)
    assert m.likelihood is not lik and isinstance(m.likelihood, velopyro.likelihoods.Normal)
    assert not hasattr(lik, "raw_sigma_u") and dict(lik.named_parameters()) == {}


def test_posterior_sample_missing_key_is_attribute_error():
    from velopyro.posterior import PosteriorSample

    s = PosteriorSample(u=1)
    assert s.u == 1 and getattr(s, "pi", None) is None and not hasattr(s, "pi")
    with pytest.raises(AttributeError, match="pi"):
        _ = s.pi


def test_moved_names_still_import_with_a_deprecation_warning():
    from velopyro import coupling, data, kinetics, model, train

    with pytest.warns(DeprecationWarning, match="velopyro.coupling.STATE_COUPLINGS"):
        assert model.STATE_COUPLINGS == tuple(coupling.STATE_COUPLINGS)
    with pytest.warns(DeprecationWarning, match="velopyro.kinetics.RATE_MAX"):
        assert model.RATE_MAX == kinetics.RATE_MAX
    with pytest.warns(DeprecationWarning, match="velopyro.data"):
        assert train.VeloData is data.VeloData
    with pytest.raises(AttributeError):
        _ = model.NOT_A_NAME

def test_import_is_lazy_and_fast():
    import subprocess
    import sys

    code = "import time; t = time.perf_counter(); import velopyro; print(time.perf_counter() - t)"
    dt = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert dt < 2.0
    assert velopyro.VeloPyro is VeloPyro
    assert torch.is_tensor(velopyro.kinetics.exp_diff_ratio(torch.ones(1), torch.ones(1), torch.ones(1)))


def test_validation_indices_are_held_out(sim):
    val = np.arange(0, sim.n_obs, 5)
    model = VeloPyro(sim)
    model.fit(max_epochs=2, batch_size=128, progress_bar=False, validation_indices=val)
    np.testing.assert_array_equal(model.validation_indices, val)
    assert len(np.intersect1d(model.train_indices, val)) == 0
    assert len(model.train_indices) + len(val) == sim.n_obs
    with pytest.raises(VelopyroInputError, match="validation_indices"):
        model.fit(max_epochs=1, progress_bar=False, validation_indices=[sim.n_obs + 3])
    with pytest.raises(VelopyroInputError, match="validation_indices"):
        model.fit(max_epochs=1, progress_bar=False, validation_indices=np.array([0.5, 1.5]))


def test_fit_cut_short_at_max_epochs_warns_and_is_marked(sim):
    model = VeloPyro(sim)
    with pytest.warns(UserWarning, match="reached max_epochs=2 before early stopping") as caught:
        model.fit(max_epochs=2, batch_size=256, progress_bar=False, seed=0)
    assert {w.filename for w in caught if "max_epochs" in str(w.message)} == {__file__}  # the caller's line
    assert model.history["converged"] is False and model.history["stopped_early"] is False
    import matplotlib

    matplotlib.use("Agg")
    fig = velopyro.pl.loss_curve(model)
    assert "not converged" in fig.axes[0].get_title()
