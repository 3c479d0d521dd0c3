"""Posterior draws come from tracing the guide and replaying the model (velopyro.posterior.draw).

- The default guide's draws equal, seed for seed, the hand-written read-out the posterior used before
  (encoder mean and scale, ``z = loc + scale * eps``, ``pi ~ q(pi | z)``, the kinetics of z, the per-state
  log-likelihoods): same values, same random stream.
- A guide defined only here (a Laplace q(z | u, s) and a per-gene Dirichlet q(pi | z) from one linear
  layer, neither a family velopyro ships) is registered, fitted, and every read-out, the posterior
  predictive, ArviZ and the directional uncertainty work without an edit elsewhere; its draws are its own.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from velopyro import VeloPyro, guide, posterior, ppc
from velopyro._rng import seeded
from velopyro.datasets import simulate
from velopyro.nn import Encoder

N_CELLS, N_GENES = 120, 8


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LaplaceGuide(nn.Module):
    """q(z | u, s) = Laplace(loc, scale) and q(pi_g | z) = Dirichlet(softplus(W z + b)_g + 0.05)."""

    with_pi = True

    def __init__(self, n_genes, n_latent, likelihood, n_hidden=256, n_layers=1, dropout_rate=0.1):
        super().__init__()
        self.n_genes = n_genes
        self.encoder = Encoder(n_genes, n_latent, n_hidden, n_layers, dropout_rate)
        self.pi_layer = nn.Linear(n_latent, n_genes * 4)
        self._encoder_input = likelihood.encoder_input

    def q_pi(self, z: torch.Tensor) -> dist.Dirichlet:
        conc = nn.functional.softplus(self.pi_layer(z)).view(*z.shape[:-1], self.n_genes, 4) + 0.05
        return dist.Dirichlet(conc)

    def forward(self, idx, u=None, s=None, size_factor_u=None, size_factor_s=None, batch_index=None, kl_weight=1.0,
                penalty_weight=1.0, n_cells=None):
        n_cells = idx.shape[0] if n_cells is None else n_cells
        pyro.module("laplace_guide", self)
        with pyro.plate("cells", n_cells, subsample=idx, dim=-2):
            x = torch.cat([self._encoder_input(u, size_factor_u), self._encoder_input(s, size_factor_s)], -1)
            loc, scale = self.encoder(x)
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", dist.Laplace(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
            if self.with_pi:
                with pyro.plate("genes", self.n_genes, dim=-1):
                    pyro.sample("pi", self.q_pi(z.squeeze(-2)))


class LaplaceZOnly(LaplaceGuide):
    """The Laplace q(z | u, s) for a model with pi integrated out (no pi site)."""

    with_pi = False


@pytest.fixture(scope="module")
def adata():
    return simulate(N_CELLS, N_GENES, seed=0)


@pytest.fixture(scope="module")
def laplace_model(adata):
    guide.register_guide("test_laplace", LaplaceGuide)
    try:
        m = VeloPyro(adata.copy(), pi_guide="test_laplace")
        with pytest.warns(UserWarning, match="max_epochs"):
            m.fit(max_epochs=20, batch_size=64, progress_bar=False)
        yield m
    finally:
        guide.GUIDES.pop("test_laplace", None)


def _old_draws(model, n_samples, batch_size):
    """The read-out as posterior.iterate_samples wrote it by hand before it traced the guide."""
    m, g, data = model.model.eval(), model.guide.eval(), model.data
    out = []
    with torch.no_grad():
        r = m.rates()
        for start in range(0, data.n_cells, batch_size):
            rows = torch.arange(start, min(start + batch_size, data.n_cells))
            idx, u, s, sfu, sfs, _ = data.batch(rows, torch.device("cpu"))
            z_loc, z_scale = g.encode(u, s, sfu, sfs)
            for _ in range(n_samples):
                z = z_loc + z_scale * torch.randn_like(z_loc)
                ks = m.kinetic_state(z, r)
                ll_u, ll_s = m.state_log_likelihood(ks["u_bar"], ks["s_bar"], u, s, sfu, sfs)
                out.append(dict(z=z, z_loc=z_loc, ll_u=ll_u, ll_s=ll_s, pi=g.pi_head(z).sample(), **ks))
    return out


@pytest.mark.parametrize("pi_guide", ["dirichlet", "logistic_normal"])
def test_default_guides_draws_equal_the_hand_written_read_out(adata, pi_guide):
    m = VeloPyro(adata.copy(), pi_guide=pi_guide)
    with pytest.warns(UserWarning, match="max_epochs"):
        m.fit(max_epochs=3, batch_size=64, progress_bar=False)
    with seeded(7):
        old = _old_draws(m, n_samples=2, batch_size=50)
    with seeded(7):
        new = [smp for _, _, smp in posterior.iterate_samples(m.model, m.guide, m.data, n_samples=2, batch_size=50)]
    assert len(new) == len(old) == 6
    for a, b in zip(old, new, strict=True):
        for key, value in a.items():
            torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)
        assert set(b["rates"]) == {"alpha", "beta", "gamma", "t_s"}
        for key, value in m.model.rates().items():
            torch.testing.assert_close(b["rates"][key], value.detach(), rtol=0, atol=0)


def test_custom_guide_draws_are_its_own(laplace_model):
    m = laplace_model
    assert isinstance(m.guide, LaplaceGuide) and m.config["pi_guide"] == "test_laplace"
    idx, u, s, sfu, sfs, _ = m.data.batch(torch.arange(40), torch.device("cpu"))
    m.guide.eval()
    with torch.no_grad(), seeded(3):
        smp = posterior.draw(m.model, m.guide, idx, u, s, sfu, sfs, n_cells=m.n_cells)
    with torch.no_grad(), seeded(3):
        tr = poutine.trace(m.guide).get_trace(idx, u, s, sfu, sfs, n_cells=m.n_cells)
    assert isinstance(tr.nodes["z"]["fn"].base_dist, dist.Laplace)
    torch.testing.assert_close(smp["z"], tr.nodes["z"]["value"].squeeze(-2), rtol=0, atol=0)
    torch.testing.assert_close(smp["z_loc"], tr.nodes["z"]["fn"].mean.squeeze(-2), rtol=0, atol=0)
    torch.testing.assert_close(smp["pi"], tr.nodes["pi"]["value"], rtol=0, atol=0)
    # the kinetics and the per-state log-likelihoods are the model's at this z
    with torch.no_grad():
        ks = m.model.kinetic_state(smp["z"])
        ll_u, ll_s = m.model.state_log_likelihood(ks["u_bar"], ks["s_bar"], u, s, sfu, sfs)
    torch.testing.assert_close(smp["u_bar"], ks["u_bar"])
    torch.testing.assert_close(smp["ll_s"], ll_s)
    torch.testing.assert_close(smp["ll_u"], ll_u)
    # Laplace draws: standardised residuals (z - loc) / b have kurtosis 6 (a Normal's: 3)
    b = tr.nodes["z"]["fn"].base_dist.scale.squeeze(-2)
    with torch.no_grad(), seeded(4):
        res = torch.stack([(posterior.draw(m.model, m.guide, idx, u, s, sfu, sfs)["z"] - smp["z_loc"]) / b
                           for _ in range(100)])
    kurtosis = (res**4).mean() / (res**2).mean() ** 2
    assert 5.0 < kurtosis.item() < 7.0


def test_custom_guide_read_outs_ppc_and_arviz(laplace_model):
    m = laplace_model
    n, g = N_CELLS, N_GENES
    v = m.get_velocity(n_samples=2)
    assert v.shape == (n, g) and np.isfinite(v).all() and np.abs(v).max() > 0
    t = m.get_latent_time(n_samples=2)
    assert t.shape == (n, g) and np.all((t >= 0) & (t <= m.config["t_max"]))
    probs = m.get_state_assignment(n_samples=2)
    assert probs.shape == (n, g, 4) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert m.get_latent_representation().shape == (n, m.config["n_latent"])
    fit_u, fit_s = m.get_expression_fit(n_samples=2)
    assert fit_u.shape == fit_s.shape == (n, g) and np.isfinite(fit_s).all()
    out = m.write_to_adata(n_samples=2, copy=True)
    assert out.layers["velocity"].shape == (n, g) and out.obsm["X_velopyro"].shape == (n, m.config["n_latent"])
    ll = m.get_log_likelihood(n_samples=2)
    assert ll.shape == (2, n) and np.isfinite(ll).all()
    pp = ppc.posterior_predictive(m, n_samples=5, seed=0, states="pi")
    assert pp["u"]["mean"].shape == (n, g) and np.isfinite(pp["s"]["mean"]).all()
    idata = m.to_arviz(n_samples=4)
    assert idata.posterior["pi"].shape == (1, 4, n, g, 4)
    assert np.isfinite(idata.log_likelihood.to_array().values).all()
    unc = m.get_directional_uncertainty(n_samples=5)
    assert len(unc) == n


@pytest.mark.parametrize("coupling", ["independent", "shared"])
def test_custom_guide_with_pi_integrated_out(adata, coupling):
    guide.register_guide("test_laplace_z", LaplaceZOnly, collapse_pi=True)
    try:
        m = VeloPyro(adata.copy(), pi_guide="test_laplace_z", state_coupling=coupling)
        assert m.model.collapse_pi and isinstance(m.guide, LaplaceZOnly)
        with pytest.warns(UserWarning, match="max_epochs"):
            m.fit(max_epochs=3, batch_size=64, progress_bar=False)
        smp = next(posterior.iterate_samples(m.model, m.guide, m.data, batch_size=50))[2]
        c = m.model.coupling
        torch.testing.assert_close(smp["pi"], c.collapsed_pi_mean(m.model.pi_prior, smp["ll_u"], smp["ll_s"]))
        torch.testing.assert_close(smp["log_state_prior"], c.collapsed_state_log_prior(m.model.pi_prior))
        assert np.isfinite(m.get_velocity(n_samples=2, state_weights="pi")).all()
        pp = ppc.posterior_predictive(m, n_samples=3, seed=0, states="pi")
        assert np.isfinite(pp["u"]["mean"]).all()
    finally:
        guide.GUIDES.pop("test_laplace_z", None)
