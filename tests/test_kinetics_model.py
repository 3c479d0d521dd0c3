"""Kinetics as a swappable part of the model: the default is today's model bit for bit; the time-dependent
kinetics fits, recovers its own simulator's truth, saves, loads, plots and is chosen from the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from scipy.stats import spearmanr
from torch.distributions import constraints, transform_to

import velopyro
import velopyro.api
from velopyro import kinetics as K
from velopyro import posterior
from velopyro._rng import seeded
from velopyro._validation import VelopyroInputError
from velopyro.datasets import simulate
from velopyro.model import VeloVIModel

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

os.environ.setdefault("MPLBACKEND", "Agg")


class PureFunctionModel(VeloVIModel):
    """The model as it was before kinetics objects: rates, switch point and state means from the raw parameters
    and the pure functions of eq. 1-12."""

    def rates(self) -> dict[str, torch.Tensor]:
        rate = transform_to(constraints.interval(0.0, K.RATE_MAX))
        switch = transform_to(constraints.interval(0.0, self.t_max))
        k = self.kinetics
        return {"alpha": rate(k.raw_alpha), "beta": rate(k.raw_beta), "gamma": rate(k.raw_gamma),
                "t_s": switch(k.raw_t_s)}

    def switch_loss(self, r=None):
        r = self.rates() if r is None else r
        u0, s0 = K.switch_point(r["alpha"], r["beta"], r["gamma"], r["t_s"])
        return ((u0 - self.u_star) ** 2 + (s0 - self.s_star) ** 2).sum()

    def kinetic_state(self, z, r=None):
        r = self.rates() if r is None else r
        rho_ind, rho_rep = self.time_heads(z)
        t_ind, t_rep = K.state_times(rho_ind, rho_rep, r["t_s"], self.t_max)
        u_bar, s_bar = K.state_means(t_ind, t_rep, r["alpha"], r["beta"], r["gamma"], r["t_s"])
        return {"rho_ind": rho_ind, "rho_rep": rho_rep, "t_ind": t_ind, "t_rep": t_rep, "u_bar": u_bar,
                "s_bar": s_bar}


def _velocity_draws(m, pure: bool) -> np.ndarray:
    out = []
    with seeded(0):
        for _, _, smp in posterior.iterate_samples(m.model, m.guide, m.data, n_samples=2, batch_size=64):
            if pure:
                r = smp["rates"]
                _, ds = K.state_velocities(smp["u_bar"], smp["s_bar"], r["alpha"], r["beta"], r["gamma"])
                out.append((ds * smp["pi"]).sum(-1).numpy())
            else:
                out.append(posterior.velocity(smp, "mean", "spliced", "pi").numpy())
    return np.concatenate(out)


def test_constant_kinetics_fit_is_bit_identical_to_the_pure_function_model(monkeypatch):
    sim = simulate(n_cells=160, n_genes=12, seed=2)
    fit = dict(max_epochs=3, batch_size=64, progress_bar=False, seed=5)
    new = velopyro.VeloPyro(sim, n_hidden=32).fit(**fit)
    with monkeypatch.context() as mp:
        mp.setattr(velopyro.api, "VeloVIModel", PureFunctionModel)
        old = velopyro.VeloPyro(sim, n_hidden=32).fit(**fit)
    assert isinstance(old.model, PureFunctionModel) and not isinstance(new.model, PureFunctionModel)
    assert new.history["train_loss"] == old.history["train_loss"]
    assert new.history["validation_loss"] == old.history["validation_loss"]
    for k, v in old.get_rates().items():
        np.testing.assert_array_equal(new.get_rates()[k], v)
    np.testing.assert_array_equal(_velocity_draws(new, pure=False), _velocity_draws(old, pure=True))
    np.testing.assert_array_equal(new.get_latent_time(n_samples=2), old.get_latent_time(n_samples=2))


def build_td_sim():
    return simulate(n_cells=500, n_genes=30, seed=0, kinetics="time_dependent")


def build_td_model(td_sim):
    """The untrained time-dependent model of test_time_dependent_recovers_its_simulators_truth."""
    # rate_init="constant": the default steady-state start reads gamma/beta and the steady states off the data
    # before any training (Spearman 0.99 untrained), so only a start that knows nothing tests the fit
    return velopyro.VeloPyro(td_sim, kinetics="time_dependent", rate_init="constant")


def fit_td_model(model, seed: int = 0):
    """That test's fit (``seed``: the fit's; benchmarks/test_thresholds.py varies it)."""
    return model.fit(max_epochs=150, batch_size=128, progress_bar=False, seed=seed)


@pytest.fixture(scope="module")
def td_sim():
    return build_td_sim()


def _recovery(model, sim) -> dict[str, float]:
    """Spearman with the truth: cell time, and the rate ratios the data identify (each gene's time scale trades
    off against its absolute rates): the degradation ratio, the spliced steady state, the start of the
    transcription ramp relative to its limit; and the ramp's depth, 1 - median fitted alpha / alpha_1."""
    trained, model.is_trained = model.is_trained, True  # the untrained model answers too
    try:
        r, t = model.get_rates(), model.get_latent_time(n_samples=10)
    finally:
        model.is_trained = trained
    v = sim.var
    return {"time": spearmanr(np.median(t, 1), sim.obs["true_t"])[0],
            "gamma/beta": spearmanr(r["gamma"] / r["beta"], v["true_gamma"] / v["true_beta"])[0],
            "alpha_1/gamma": spearmanr(r["alpha_1"] / r["gamma"], v["true_alpha_1"] / v["true_gamma"])[0],
            "alpha/alpha_1": spearmanr(r["alpha"] / r["alpha_1"], v["true_alpha"] / v["true_alpha_1"])[0],
            "ramp depth": 1.0 - float(np.median(r["alpha"] / r["alpha_1"]))}


#: Over three seeds (``python -m benchmarks.kinetics_recovery``, benchmarks/results/kinetics/recovery.md; seed 0
#: is this test) the fit reaches time >= 0.81, gamma/beta >= 0.83, alpha_1/gamma >= 0.88, alpha/alpha_1 >= 0.13
#: and a ramp depth >= 0.17 (the truth's is 0.8: the fit underestimates it); the untrained model (alpha = alpha_1,
#: constant beta, gamma) has time 0.005 ± 0.2, gamma/beta undefined, alpha_1/gamma 0.16 and no ramp, and the
#: constant kinetics cannot express a ramp. lambda_alpha/beta is not recovered at this size (0.06 ± 0.39) and is
#: not asserted. Over fit seeds of this fixture (``python -m benchmarks.test_thresholds``,
#: benchmarks/results/test_thresholds/results.md) the ramp depth fell to 0.106 and alpha/alpha_1 to 0.136, so
#: those two thresholds sit at 0.05 (the untrained model has 0 and NaN).
RECOVERY = {"time": 0.7, "gamma/beta": 0.7, "alpha_1/gamma": 0.7, "alpha/alpha_1": 0.05, "ramp depth": 0.05}


@pytest.mark.slow
# the untrained model has constant rate ratios: their Spearman is NaN, as the test expects
@pytest.mark.filterwarnings("ignore:An input array is constant:scipy.stats.ConstantInputWarning")
def test_time_dependent_recovers_its_simulators_truth(td_sim):
    model = build_td_model(td_sim)
    untrained = _recovery(model, td_sim)
    assert not any(untrained[k] > v for k, v in RECOVERY.items()), untrained  # NaN: a constant rate ratio
    fit_td_model(model)
    got = _recovery(model, td_sim)
    assert all(got[k] > v for k, v in RECOVERY.items()), got


def test_simulator_draws_the_kinetics_truth():
    sim = simulate(n_cells=60, n_genes=8, seed=3, kinetics="time_dependent")
    for name in ("alpha", "alpha_1", "lambda_alpha", "beta", "gamma"):
        assert f"true_{name}" in sim.var
    assert "true_t_" in sim.var and sim.uns["simulation"]["kinetics"] == "time_dependent"
    assert (sim.var["true_alpha"] < sim.var["true_alpha_1"]).all()  # transcription rises during induction
    kin = K.get_kinetics("time_dependent")()
    r = {k: torch.as_tensor(sim.var["true_t_" if k == "t_s" else f"true_{k}"].to_numpy(), dtype=torch.float64)
         for k in (*kin.rate_names, "t_s")}
    t = torch.as_tensor(sim.layers["true_t"], dtype=torch.float64)
    u, _ = kin.trajectory(t, r)
    transient = np.isin(sim.layers["true_state"], (0, 2))
    np.testing.assert_allclose(sim.layers["true_u"][transient], u.numpy()[transient], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kinetics must be one of"):
        simulate(n_cells=20, n_genes=3, kinetics="nope")


def test_time_dependent_save_load_plot_and_unknown_kinetics(td_sim, tmp_path):
    small = td_sim[:150, :10].copy()
    m = velopyro.VeloPyro(small, kinetics="time_dependent", n_hidden=32).fit(max_epochs=2, batch_size=64,
                                                                              progress_bar=False)
    assert m.config["kinetics"] == "time_dependent"
    assert isinstance(m.model.kinetics, K.TimeDependentKinetics)
    m.save(tmp_path / "m")
    loaded = velopyro.VeloPyro.load(tmp_path / "m", small)
    assert loaded.config["kinetics"] == "time_dependent"
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), m.get_velocity(n_samples=2))
    # an unknown name is refused in one line, before anything is built
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["config"]["kinetics"] = "my_lab_kinetics"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VelopyroInputError, match="my_lab_kinetics.*not registered") as err:
        velopyro.VeloPyro.load(tmp_path / "m", small)
    assert "\n" not in str(err.value)
    # the fitted AnnData: every rate under var["fit_<rate>"], and the plots use the time-dependent closed form
    out = m.write_to_adata(copy=True)
    for name in ("alpha", "alpha_1", "lambda_alpha", "beta", "gamma", "t_"):
        assert f"fit_{name}" in out.var
    r2 = velopyro.tl.gene_fit_r2(out)
    assert np.isfinite(r2).all()
    from velopyro._phase import _curve, _gene_rates, _likelihood

    genes = np.arange(out.n_vars)
    rates, lik = _gene_rates(out, genes), _likelihood(out, genes)
    t = np.full((1, out.n_vars), 3.0)
    u_td, _ = _curve(rates, t, lik)
    r = {k: torch.as_tensor(out.var["fit_t_" if k == "t_s" else f"fit_{k}"].to_numpy(), dtype=torch.float64)
         for k in ("alpha", "alpha_1", "lambda_alpha", "beta", "gamma", "t_s")}
    want, _ = K.TimeDependentKinetics().trajectory(torch.as_tensor(t), r)
    np.testing.assert_allclose(u_td, want.numpy(), rtol=1e-6, atol=1e-6)  # the Normal likelihood's mean: the trajectory
    import matplotlib.pyplot as plt

    fig = velopyro.pl.phase_portraits(out, n_genes=2)
    plt.close(fig)


def test_models_saved_before_kinetics_objects_load_as_constant(tmp_path):
    sim = simulate(n_cells=100, n_genes=6, seed=4)
    m = velopyro.VeloPyro(sim, n_hidden=16).fit(max_epochs=1, batch_size=50, progress_bar=False)
    m.save(tmp_path / "m")
    # rewrite the directory as the previous version wrote it: raw_<rate> on the model, no "kinetics" entry
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    state["model"] = {k.removeprefix("kinetics."): v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "m" / "model.pt")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["config"]["kinetics"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    loaded = velopyro.VeloPyro.load(tmp_path / "m", sim)
    assert loaded.config["kinetics"] == "constant"
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), m.get_velocity(n_samples=2))


def test_kinetics_argument_and_command_line_choices(capsys):
    sim = simulate(n_cells=30, n_genes=4, seed=0)
    with pytest.raises(ValueError, match="kinetics must be one of"):
        velopyro.VeloPyro(sim, kinetics="linear")
    from velopyro.cli import main

    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--kinetics" in out and all(name in out for name in K.KINETICS)
    assert main(["fit", "x.h5ad", "-o", "y.h5ad", "--kinetics", "linear"]) == 2
    assert "invalid choice" in capsys.readouterr().err
