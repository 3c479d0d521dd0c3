"""Observation models (seed eq. 20-21 and the count extensions): log-probabilities against scipy,
shapes under enumeration, the registry, and a user-defined likelihood plugged into model and simulator."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from velopyro import likelihoods
from velopyro.datasets import simulate
from velopyro.likelihoods import (
    LIKELIHOODS,
    Likelihood,
    NegativeBinomial,
    Normal,
    Poisson,
    get_likelihood,
    register_likelihood,
)

RNG = np.random.default_rng(0)
N, G = 6, 3


def _setup(lik: Likelihood, counts: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if counts:
        u = RNG.poisson(5.0, (N, G)).astype(np.float32)
        s = RNG.poisson(8.0, (N, G)).astype(np.float32)
        sf = np.exp(RNG.normal(0, 0.3, N)).astype(np.float32)
    else:
        u = RNG.uniform(0, 1, (N, G)).astype(np.float32)
        s = RNG.uniform(0, 1, (N, G)).astype(np.float32)
        sf = np.ones(N, dtype=np.float32)
    lik.setup(u, s, sf, sf)
    return u, s, sf


def _set(lik: Likelihood, name: str, value: np.ndarray) -> None:
    """Set a positive per-gene parameter through its unconstrained ``raw_`` value."""
    p = getattr(lik, f"raw_{name}")
    with torch.no_grad():
        p.copy_(torch.log(torch.as_tensor(value, dtype=torch.float32)))


@pytest.mark.parametrize("state", [0, 1, 2, 3])
def test_normal_log_prob_matches_scipy(state: int) -> None:
    lik = Normal()
    u, s, _ = _setup(lik, counts=False)
    sigma = np.array([0.05, 0.1, 0.2], dtype=np.float32)
    _set(lik, "sigma_u", sigma)
    mean = RNG.uniform(0, 1, (N, G)).astype(np.float32)
    lp = lik.dist(torch.as_tensor(mean), torch.tensor(state), "u").log_prob(torch.as_tensor(u)).detach().numpy()
    c = (1.0, 1.0, 1.0, 0.1)[state]  # c_k of eq. 20-21: the repression steady state is 10x tighter
    np.testing.assert_allclose(lp, stats.norm.logpdf(u, mean, c * sigma), rtol=1e-5, atol=1e-5)
    assert torch.allclose(lik.sigma("u"), torch.as_tensor(sigma))


def test_poisson_log_prob_matches_scipy() -> None:
    lik = Poisson()
    u, s, sf = _setup(lik, counts=True)
    scale = np.array([10.0, 20.0, 5.0], dtype=np.float32)
    bg = np.array([0.1, 0.01, 0.5], dtype=np.float32)
    _set(lik, "scale_s", scale)
    _set(lik, "background_s", bg)
    mean = RNG.uniform(0, 1, (N, G)).astype(np.float32)
    sf_t = torch.as_tensor(sf)[:, None]
    d = lik.dist(torch.as_tensor(mean), torch.tensor(2), "s", sf_t)
    rate = sf[:, None] * (scale * mean + bg)
    np.testing.assert_allclose(d.mean.detach().numpy(), rate, rtol=1e-5)
    lp = d.log_prob(torch.as_tensor(s)).detach().numpy()
    np.testing.assert_allclose(lp, stats.poisson.logpmf(s, rate), rtol=1e-5)


def test_negative_binomial_log_prob_mean_and_variance() -> None:
    lik = NegativeBinomial()
    u, s, sf = _setup(lik, counts=True)
    scale = np.array([10.0, 20.0, 5.0], dtype=np.float32)
    bg = np.array([0.1, 0.01, 0.5], dtype=np.float32)
    theta = np.array([0.5, 5.0, 50.0], dtype=np.float32)
    _set(lik, "scale_u", scale)
    _set(lik, "background_u", bg)
    _set(lik, "theta_u", theta)
    mean = RNG.uniform(0, 1, (N, G)).astype(np.float32)
    d = lik.dist(torch.as_tensor(mean), torch.tensor(0), "u", torch.as_tensor(sf)[:, None])
    mu = sf[:, None] * (scale * mean + bg)
    # scipy's nbinom(n, p) counts failures before n successes: mean n (1-p)/p = mu for p = theta/(theta+mu)
    expected = stats.nbinom.logpmf(u, theta, theta / (theta + mu))
    np.testing.assert_allclose(d.log_prob(torch.as_tensor(u)).detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.mean.detach().numpy(), mu, rtol=1e-5)
    np.testing.assert_allclose(d.variance.detach().numpy(), mu + mu**2 / theta, rtol=1e-4)
    assert set(lik.gene_params()) == {"scale_u", "scale_s", "background_u", "background_s", "theta_u", "theta_s"}


@pytest.mark.parametrize("name", ["normal", "poisson", "negative_binomial"])
def test_enumeration_shape_matches_per_state_loop(name: str) -> None:
    """The model calls dist() with the state on dim -3 (enumeration); it must equal a per-state loop."""
    lik = get_likelihood(name)
    u, s, sf = _setup(lik, counts=lik.is_count)
    means = torch.rand(4, N, G)
    k = torch.arange(4).view(-1, 1, 1)
    sf_t = torch.as_tensor(sf)[:, None]
    lp = lik.dist(means, k, "s", sf_t).log_prob(torch.as_tensor(s))
    assert lp.shape == (4, N, G)
    for j in range(4):
        torch.testing.assert_close(lp[j], lik.dist(means[j], torch.tensor(j), "s", sf_t).log_prob(torch.as_tensor(s)))


def test_count_kinetic_scale_and_encoder_input() -> None:
    lik = Poisson()
    u, s, sf = _setup(lik, counts=True)
    k = lik.to_kinetic_scale(u, sf)
    assert k.shape == u.shape and np.all(k >= 0)
    np.testing.assert_allclose(np.percentile(k, 99, axis=0), 1.0, rtol=1e-5)  # gene's 99th percentile -> 1
    x = lik.encoder_input(torch.as_tensor(u), torch.as_tensor(sf)[:, None])
    np.testing.assert_allclose(x.numpy(), np.log1p(u / sf[:, None]), rtol=1e-6)
    assert Normal().to_kinetic_scale(u, sf) is u


def test_registry_and_aliases() -> None:
    assert isinstance(get_likelihood("nb"), NegativeBinomial)
    assert isinstance(get_likelihood("Negative-Binomial"), NegativeBinomial)
    assert isinstance(get_likelihood("gaussian"), Normal)
    assert isinstance(get_likelihood(Poisson), Poisson)
    inst = Poisson()
    assert get_likelihood(inst) is inst
    with pytest.raises(ValueError, match="Unknown likelihood"):
        get_likelihood("gamma_poisson_mixture")
    assert {"normal", "poisson", "negative_binomial"} <= set(LIKELIHOODS)


class StudentT(Normal):
    """The docstring's example: heavier tails than the Normal, same per-gene sigma."""

    name = "student_t_test"

    def dist(self, mean, state, modality, size_factor=None):  # noqa: D102
        scale = self.state_scale[state] * self.sigma(modality)
        return dist.StudentT(4.0, mean, scale)


def test_custom_likelihood_registers_and_runs_through_model_and_simulator() -> None:
    register_likelihood(StudentT)
    try:
        lik = get_likelihood("student_t_test")
        u, s, _ = _setup(lik, counts=False)
        mean = torch.rand(N, G)
        lp = lik.dist(mean, torch.tensor(1), "u").log_prob(torch.as_tensor(u)).detach().numpy()
        sigma = lik.sigma("u").detach().numpy()
        np.testing.assert_allclose(lp, stats.t.logpdf(u, 4.0, mean.numpy(), sigma), rtol=1e-4, atol=1e-5)
        adata = simulate(40, 5, seed=1, likelihood="student_t_test")
        assert adata.uns["simulation"]["likelihood"] == "student_t_test"
        assert "true_sigma_u" in adata.var
        import velopyro

        model = velopyro.VeloPyro(adata, likelihood="student_t_test", n_hidden=16)
        ll_u, ll_s = model.model.state_log_likelihood(
            torch.rand(40, 5, 4), torch.rand(40, 5, 4), model.data.u, model.data.s)
        assert ll_u.shape == (40, 5, 4) and torch.isfinite(ll_u).all()
    finally:
        likelihoods.LIKELIHOODS.pop("student_t_test", None)


@pytest.mark.parametrize("name", ["poisson", "negative_binomial"])
def test_simulated_counts_follow_the_likelihood(name: str) -> None:
    """simulate() draws counts through the likelihood object: mean and dispersion match its parameters."""
    adata = simulate(3000, 4, seed=2, likelihood=name, counts_per_unit=20.0, dispersion=4.0)
    x = adata.layers["spliced"]
    assert np.all(x == np.round(x)) and np.all(x >= 0)
    sf = adata.obs["true_size_factor"].to_numpy()[:, None]
    scale, background = adata.var["true_scale_s"].to_numpy(), adata.var["true_background_s"].to_numpy()
    mu = sf * (scale * adata.layers["true_s"] + background)
    resid = (x - mu).ravel()
    assert abs(resid.mean()) < 0.05 * mu.mean()
    # Pearson dispersion: E[(x - mu)^2 / Var] = 1 with the likelihood's own variance
    var = mu if name == "poisson" else mu + mu**2 / 4.0
    assert abs(np.mean((x - mu) ** 2 / var) - 1.0) < 0.1
