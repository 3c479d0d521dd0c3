"""pi as a function of z (pi_guide="conditional"): p(k | z) = Categorical(f(z)) in place of eq. 14's Dirichlet."""

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from velopyro import VeloPyro, posterior
from velopyro.datasets import simulate
from velopyro.guide import VeloVIGuide, get_guide
from velopyro.likelihoods import Normal
from velopyro.model import VeloVIModel, switch_targets

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

N, G, D = 6, 3, 10


def _model_and_guide(coupling):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    u = rng.random((N, G)).astype(np.float32)
    s = rng.random((N, G)).astype(np.float32)
    lik = Normal()
    lik.setup(u, s, np.ones(N, np.float32), np.ones(N, np.float32))
    us, ss = switch_targets(u, s)
    model = VeloVIModel(G, lik, us, ss, n_hidden=16, state_coupling=coupling, switch_penalty=0.0,
                        collapse_pi=True, pi_of_z=True).eval()
    guide = VeloVIGuide(G, D, lik, pi_guide="conditional", n_hidden=16).eval()
    return model, guide, torch.from_numpy(u), torch.from_numpy(s)


def test_the_family_is_registered_with_pi_a_function_of_z():
    family = get_guide("conditional")
    assert family.pi_of_z and not get_guide("collapsed").pi_of_z and not get_guide("dirichlet").pi_of_z
    with pytest.raises(ValueError, match="pi_of_z=True needs collapse_pi=True"):
        lik = Normal()
        lik.setup(np.ones((4, 2), np.float32), np.ones((4, 2), np.float32), np.ones(4, np.float32),
                  np.ones(4, np.float32))
        VeloVIModel(2, lik, np.ones(2, np.float32), np.ones(2, np.float32), pi_of_z=True)


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_the_loss_is_the_mixture_under_pi_of_z(coupling):
    """No pi site anywhere; the enumerated loss equals -log p(z) - sum log sum_k f_k(z) p(x | k) + log q(z)
    computed by hand from the same z, the model's state network and the per-state likelihoods."""
    model, guide, u, s = _model_and_guide(coupling)
    assert guide.pi_head is None and guide.state_head is None and model.state_prior is not None
    ones = torch.ones(N, 1)
    args = (torch.arange(N), u, s, ones, ones)
    g_tr = poutine.trace(guide).get_trace(*args)
    assert "pi" not in g_tr.nodes
    m_tr = poutine.trace(poutine.replay(poutine.enum(model, first_available_dim=-3), g_tr)).get_trace(*args)
    assert "pi" not in m_tr.nodes
    names = ["k"] if coupling == "shared" else ["k_u", "k_s"]
    assert all(m_tr.nodes[n]["value"].numel() == 4 for n in names)  # enumerated, never sampled
    z = g_tr.nodes["z"]["value"]
    with torch.no_grad():
        log_pi = torch.log(model.state_prior(z.squeeze(-2)))
        ks = model.kinetic_state(z.squeeze(-2))
        ll_u, ll_s = model.state_log_likelihood(ks["u_bar"], ks["s_bar"], u, s)
    if coupling == "shared":
        mix = torch.logsumexp(log_pi + ll_u + ll_s, -1)
    else:
        mix = torch.logsumexp(log_pi + ll_u, -1) + torch.logsumexp(log_pi + ll_s, -1)
    z_site = g_tr.nodes["z"]
    log_q = z_site["fn"].log_prob(z).sum()
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum()
    expected = -(mix.sum() + log_p - log_q)
    # replay the same z in the ELBO: a guide fixed at the traced z and its log-density
    fixed = poutine.replay(guide, trace=g_tr)
    loss = TraceEnum_ELBO(max_plate_nesting=2).differentiable_loss(model, fixed, *args)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def fitted_conditional():
    sim = simulate(n_cells=200, n_genes=6, seed=3)
    model = VeloPyro(sim, pi_guide="conditional")
    model.fit(max_epochs=5, batch_size=64, progress_bar=False, seed=0)
    return model


def test_read_outs_weight_states_by_pi_of_z(fitted_conditional):
    model = fitted_conditional
    smp = next(posterior.iterate_samples(model.model, model.guide, model.data, batch_size=50))[2]
    assert "pi_prior" not in smp and "pi_z" not in smp
    torch.testing.assert_close(smp["pi"], model.model.state_prior(smp["z"]))
    # the state posterior is the mixture's: pi(z)_k p(u | k) p(s | k), normalised
    expected = torch.softmax(torch.log(smp["pi"]) + smp["ll_u"] + smp["ll_s"], -1)
    torch.testing.assert_close(posterior.state_posterior(smp), expected)
    v = model.get_velocity(n_samples=2)
    assert v.shape == (200, 6) and np.isfinite(v).all()
    assert np.isfinite(model.get_latent_time(n_samples=2)).all()
    assert "state_head" not in model.history


def test_conditional_round_trips_through_save_and_load(fitted_conditional, tmp_path):
    fitted_conditional.save(tmp_path / "m")
    loaded = VeloPyro.load(tmp_path / "m", fitted_conditional.adata)
    assert loaded.config["pi_guide"] == "conditional" and loaded.model.state_prior is not None
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), fitted_conditional.get_velocity(n_samples=2))


def test_conditional_replicates(fitted_conditional):
    from velopyro import ppc

    for states in ("posterior", "pi"):
        rep = ppc.posterior_predictive(fitted_conditional, n_samples=2, states=states, seed=0)
        for m in ("u", "s"):
            assert rep[m]["mean"].shape == (200, 6)
            assert all(np.isfinite(x).all() for x in rep[m].values())
