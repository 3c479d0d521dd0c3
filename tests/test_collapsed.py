"""pi integrated out (pi_guide="collapsed"): the exact marginal, the posterior of pi, the read-outs."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from velopyro import VeloPyro, collapsed, posterior
from velopyro import coupling as coupling_mod
from velopyro.cli import _build_parser
from velopyro.coupling import get_state_coupling
from velopyro.datasets import simulate
from velopyro.guide import VeloVIGuide
from velopyro.likelihoods import Normal
from velopyro.model import VeloVIModel, switch_targets

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

N, G, D = 6, 3, 10
ALPHA = torch.full((4,), 0.25, dtype=torch.float64)


def _models(coupling):
    """Collapsed and uncollapsed models with the same parameters, no switch penalty, and fixed z."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    u = rng.random((N, G)).astype(np.float32)
    s = rng.random((N, G)).astype(np.float32)
    lik = Normal()
    lik.setup(u, s, np.ones(N, np.float32), np.ones(N, np.float32))
    us, ss = switch_targets(u, s)
    kw = dict(n_hidden=16, state_coupling=coupling, switch_penalty=0.0)
    m_c = VeloVIModel(G, lik, us, ss, collapse_pi=True, **kw)
    m_u = VeloVIModel(G, lik, us, ss, **kw)
    m_u.load_state_dict(m_c.state_dict())
    for m in (m_c, m_u):
        m.eval()
    z = torch.randn(N, 1, D)
    return m_c, m_u, torch.from_numpy(u), torch.from_numpy(s), z


def _z_guide(z, pi=None):
    """A guide that fixes z (and pi) and whose log-density cancels the model's prior term of each."""

    def guide(idx, u, s, sfu, sfs, kl_weight=1.0, penalty_weight=1.0, n_cells=None):
        with pyro.plate("cells", N, dim=-2):
            pyro.sample("z", dist.Delta(z, log_density=dist.Normal(0.0, 1.0).log_prob(z).sum(-1), event_dim=1))
            if pi is not None:
                with pyro.plate("genes", G, dim=-1):
                    log_prior = dist.Dirichlet(torch.full((4,), 0.25)).log_prob(pi)
                    pyro.sample("pi", dist.Delta(pi, log_density=log_prior, event_dim=1))

    return guide


def _pair_log_lik(ll_u, ll_s, log_pi, coupling):
    """The uncollapsed model's log p(u, s | z, pi) per (cell, gene), the state(s) summed out."""
    if coupling == "shared":
        return torch.logsumexp(log_pi + ll_u + ll_s, -1)
    return torch.logsumexp(log_pi + ll_u, -1) + torch.logsumexp(log_pi + ll_s, -1)


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_collapsed_marginal_equals_monte_carlo_over_pi(coupling):
    """Pyro's enumerated marginal of the collapsed model = log E_{pi ~ Dirichlet(0.25)} p(u, s | z, pi) of the
    uncollapsed model, per (cell, gene) pair, within Monte Carlo error."""
    m_c, m_u, u, s, z = _models(coupling)
    ones = torch.ones(N, 1)
    args = (torch.arange(N), u, s, ones, ones)
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    log_p_collapsed = -elbo.loss(m_c, _z_guide(z), *args)  # the z terms cancel: log p(u, s | z)
    with torch.no_grad():
        ks = m_u.kinetic_state(z.squeeze(-2))
        ll_u, ll_s = (x.double() for x in m_u.state_log_likelihood(ks["u_bar"], ks["s_bar"], u, s))
    gen = torch.Generator().manual_seed(1)
    # the hand formula is the uncollapsed Pyro model's marginal for a fixed pi (away from the simplex's edges,
    # where the float32 prior terms that cancel between model and guide lose digits)
    pi1 = torch.distributions.Dirichlet(torch.full((N, G, 4), 2.0)).sample()
    assert -elbo.loss(m_u, _z_guide(z, pi1), *args) == pytest.approx(
        _pair_log_lik(ll_u, ll_s, pi1.double().log(), coupling).sum().item(), rel=1e-5)
    # Monte Carlo over pi ~ Dirichlet(0.25): gamma draws from a local generator, normalised
    m = 100_000
    gam = torch._standard_gamma(torch.full((m, N, G, 4), 0.25, dtype=torch.float64), generator=gen)
    log_pi = torch.log(gam.clamp_min(1e-300)) - torch.log(gam.sum(-1, keepdim=True))
    lp = _pair_log_lik(ll_u, ll_s, log_pi, coupling)  # (m, N, G)
    top = lp.amax(0)
    w = torch.exp(lp - top)
    est = torch.log(w.mean(0)) + top
    se = (w.std(0) / (w.mean(0) * m**0.5)).square().sum().sqrt().item()  # delta method, summed pairs
    assert se < 0.05
    assert log_p_collapsed == pytest.approx(est.sum().item(), abs=4 * se + 1e-3)
    # the coupling's marginal with pi integrated out gives the same number
    marginal = get_state_coupling(coupling).prior_log_likelihood(torch.log(ALPHA), ll_u, ll_s)
    assert marginal.sum().item() == pytest.approx(log_p_collapsed, abs=1e-3)
    if coupling == "independent":
        # the factorised mixtures at E[pi] (the same pi is NOT shared then) are measurably wrong
        naive = _pair_log_lik(ll_u, ll_s, torch.log(ALPHA), coupling).sum().item()
        assert abs(naive - est.sum().item()) > 10 * se


def test_pair_prior_is_the_dirichlet_second_moment():
    joint = collapsed.pair_prior(ALPHA)
    assert torch.allclose(torch.diagonal(joint), torch.full((4,), 0.15625, dtype=torch.float64))
    assert torch.allclose(joint[0, 1:], torch.full((3,), 0.03125, dtype=torch.float64))
    assert joint.sum().item() == pytest.approx(1.0)
    cond = collapsed.conditional_prior(ALPHA)
    assert torch.allclose(cond, joint / joint.sum(-1, keepdim=True))
    assert cond[2, 2].item() == pytest.approx(0.625) and cond[2, 0].item() == pytest.approx(0.125)


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_pi_posterior_mean_matches_importance_sampling(coupling):
    """E[pi | u, s, z] in closed form = the self-normalised importance estimate with the prior as proposal."""
    gen = torch.Generator().manual_seed(2)
    ll_u = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2.0
    ll_s = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2.0
    m = 200_000
    gam = torch._standard_gamma(torch.full((m, 5, 4), 0.25, dtype=torch.float64), generator=gen)
    pi = gam / gam.sum(-1, keepdim=True)
    w = torch.softmax(_pair_log_lik(ll_u, ll_s, torch.log(pi.clamp_min(1e-300)), coupling), dim=0)
    est = (w.unsqueeze(-1) * pi).sum(0)
    exact = get_state_coupling(coupling).collapsed_pi_mean(ALPHA, ll_u, ll_s)
    torch.testing.assert_close(exact.sum(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(exact, est, atol=0.01, rtol=0)
    assert (exact - ALPHA).abs().max() > 0.1  # the data moved pi away from its prior mean
    if coupling == "independent":  # a new pair (k_u, k_s) given the data: E[pi_i pi_j | u, s, z]
        pair = collapsed.pair_predictive(ll_u, ll_s, ALPHA)
        est2 = (w[..., None, None] * pi.unsqueeze(-1) * pi.unsqueeze(-2)).sum(0)
        torch.testing.assert_close(pair.sum((-1, -2)), torch.ones(5, dtype=torch.float64))
        torch.testing.assert_close(pair, est2, atol=0.01, rtol=0)


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_collapsed_model_and_guide_have_no_pi_site(coupling):
    m_c, _, u, s, _ = _models(coupling)
    guide = VeloVIGuide(G, D, m_c.likelihood, pi_guide="collapsed", n_hidden=16).eval()
    assert guide.pi_head is None
    ones = torch.ones(N, 1)
    args = (torch.arange(N), u, s, ones, ones)
    g_tr = poutine.trace(guide).get_trace(*args)
    tr = poutine.trace(poutine.replay(poutine.enum(m_c, first_available_dim=-3), g_tr)).get_trace(*args)
    assert "pi" not in g_tr.nodes and "pi" not in tr.nodes
    names = ["k"] if coupling == "shared" else ["k_u", "k_s"]
    assert all(tr.nodes[n]["value"].numel() == 4 for n in names)  # enumerated, never sampled
    if coupling == "independent":
        # k_s | k_u: (0.25 + [k_s = k_u]) / 2, a (4, 4) table over the two enumeration dims
        probs = tr.nodes["k_s"]["fn"].probs.reshape(4, -1, 4)[:, 0]  # same for every cell and gene
        torch.testing.assert_close(probs, collapsed.conditional_prior(m_c.pi_prior))
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(m_c, guide, *args)
    assert np.isfinite(loss)
    # without observations the model draws the states and the data (posterior predictive)
    tr2 = poutine.trace(poutine.replay(m_c, g_tr)).get_trace(torch.arange(N), None, None, ones, ones)
    assert tr2.nodes["u"]["value"].shape == (N, G) and tr2.nodes[names[-1]]["value"].shape == (N, G)


@pytest.fixture(scope="module")
def fitted_collapsed():
    sim = simulate(n_cells=200, n_genes=6, seed=3)
    model = VeloPyro(sim, pi_guide="collapsed")
    model.fit(max_epochs=5, batch_size=64, progress_bar=False, seed=0)
    return model


def test_collapsed_read_outs_use_the_exact_posterior_of_pi(fitted_collapsed):
    model = fitted_collapsed
    assert "pi" not in model.guide.state_dict() and model.guide.pi_head is None
    smp = next(posterior.iterate_samples(model.model, model.guide, model.data, batch_size=50))[2]
    independent = get_state_coupling("independent")
    torch.testing.assert_close(smp["pi"], independent.collapsed_pi_mean(model.model.pi_prior, smp["ll_u"],
                                                                        smp["ll_s"]))
    # state posterior: uniform prior weight of the shared state, p(k) ∝ p(u | k) p(s | k)
    torch.testing.assert_close(posterior.state_posterior(smp), torch.softmax(smp["ll_u"] + smp["ll_s"], -1))
    torch.testing.assert_close(posterior.mixture_log_likelihood(smp, "independent"),
                               independent.prior_log_likelihood(torch.log(model.model.pi_prior), smp["ll_u"],
                                                                smp["ll_s"]))
    v_pi = model.get_velocity(n_samples=2, state_weights="pi")
    v_post = model.get_velocity(n_samples=2, state_weights="posterior")
    assert v_pi.shape == (200, 6) and np.isfinite(v_pi).all() and not np.allclose(v_pi, v_post)
    p = model.get_state_assignment(n_samples=2, state_weights="pi")
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    t = model.get_latent_time(n_samples=2)
    assert np.isfinite(t).all() and (t >= 0).all()
    assert np.isfinite(model.get_log_likelihood()).all()


def test_collapsed_save_load_and_cli_choice(fitted_collapsed, tmp_path):
    fitted_collapsed.save(tmp_path / "m")
    loaded = VeloPyro.load(tmp_path / "m", fitted_collapsed.adata)
    assert loaded.config["pi_guide"] == "collapsed" and loaded.model.collapse_pi
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), fitted_collapsed.get_velocity(n_samples=2))
    args = _build_parser().parse_args(["fit", "in.h5ad", "-o", "out.h5ad", "--pi-guide", "collapsed"])
    assert args.pi_guide == "collapsed"


def test_collapsed_replicates_and_state_draws(fitted_collapsed):
    from velopyro import ppc

    model = fitted_collapsed
    smp = next(posterior.iterate_samples(model.model, model.guide, model.data, batch_size=50))[2]
    for states in ("posterior", "pi"):
        u_rep, s_rep = ppc.replicate(model, smp, states)
        assert u_rep.shape == (50, 6) and torch.isfinite(s_rep).all()
    # pair draws follow their (k_u, k_s) table
    table = torch.tensor([[0.4, 0.1, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3], [0.0] * 4])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        d = coupling_mod._pair_draw(table.expand(20_000, 4, 4))
    freq = torch.zeros(4, 4).index_put_((d["k_u"], d["k_s"]), torch.ones(20_000), accumulate=True) / 20_000
    torch.testing.assert_close(freq, table, atol=0.015, rtol=0)


def build_state_head_fit(seed: int = 0) -> VeloPyro:
    """The ``state_head_fit`` fixture (``seed``: the fit's; benchmarks/test_thresholds.py varies it)."""
    sim = simulate(n_cells=300, n_genes=10, seed=3)
    return VeloPyro(sim, pi_guide="collapsed").fit(max_epochs=60, batch_size=64, progress_bar=False, seed=seed)


def state_head_metrics(model: VeloPyro) -> dict[str, float]:
    """Cross-entropy of the head's pi(z) to the exact E[pi | u, s, z] on the training cells, against the best
    z-free read-out (the targets' mean): ``margin`` = constant's minus head's."""
    targets, fits = [], []
    for _, _, smp in posterior.iterate_samples(model.model, model.guide, model.data, batch_size=50,
                                               indices=model.train_indices):
        targets.append(smp["pi"])
        fits.append(smp["pi_z"])
    t, h = torch.cat(targets), torch.cat(fits)
    ce_head = float(-(t * torch.log(h)).sum(-1).mean())
    ce_constant = float(-(t * torch.log(t.mean(0, keepdim=True))).sum(-1).mean())
    return {"ce_head": ce_head, "ce_constant": ce_constant, "margin": ce_constant - ce_head}


# the head's margin over the best constant read-out: 0.043 to 0.076 over fit seeds 0-9 x 1, 2 threads
# (benchmarks/results/test_thresholds/results.md, "state_head")
STATE_HEAD_MARGIN = 0.02


@pytest.fixture(scope="module")
def state_head_fit():
    return build_state_head_fit(seed=0)


def test_state_head_is_fitted_to_the_exact_posterior_mean_and_weights_velocity(state_head_fit):
    """pi integrated out: the guide's StateHead, fitted after SVI by cross-entropy to E[pi | u, s, z], is what
    the "pi" weights (the velocity's default) read; it beats the best constant read-out on the training cells,
    and refitting it with the same seed gives the same head without touching the model or the encoder."""
    from velopyro import train

    model = state_head_fit
    head = model.guide.state_head
    assert bool(head.fitted) and model.history["state_head"]["epochs"] >= 1
    smp = next(posterior.iterate_samples(model.model, model.guide, model.data, batch_size=50))[2]
    torch.testing.assert_close(smp["pi_z"], head(smp["z"]))
    torch.testing.assert_close(posterior.state_weights(smp, "pi"), smp["pi_z"])
    assert state_head_metrics(model)["margin"] > STATE_HEAD_MARGIN
    before = ({k: v.clone() for k, v in model.model.state_dict().items()},
              {k: v.clone() for k, v in model.guide.encoder.state_dict().items()},
              {k: v.clone() for k, v in head.state_dict().items()})
    train.fit_state_head(model.model, model.guide, model.data, model.train_indices, model.validation_indices,
                         torch.device("cpu"), seed=0, batch_size=model.history["batch_size"])
    after = (model.model.state_dict(), model.guide.encoder.state_dict(), head.state_dict())
    for b, a in zip(before, after, strict=True):
        for name, value in b.items():
            assert torch.equal(a[name], value), name


def test_uncollapsed_guides_have_no_state_head():
    sim = simulate(n_cells=80, n_genes=4, seed=0)
    model = VeloPyro(sim, n_hidden=16).fit(max_epochs=2, batch_size=40, progress_bar=False, seed=0)
    assert model.guide.state_head is None and "state_head" not in model.history
    smp = next(posterior.iterate_samples(model.model, model.guide, model.data, batch_size=40))[2]
    assert "pi_z" not in smp


def test_state_head_round_trips_through_save_and_load(tmp_path):
    sim = simulate(n_cells=120, n_genes=6, seed=0)
    model = VeloPyro(sim.copy(), pi_guide="collapsed").fit(max_epochs=5, batch_size=60, progress_bar=False, seed=0)
    model.save(tmp_path / "fit")
    loaded = VeloPyro.load(tmp_path / "fit", adata=sim.copy())
    assert bool(loaded.guide.state_head.fitted)
    for name, value in model.guide.state_head.state_dict().items():
        assert torch.equal(loaded.guide.state_head.state_dict()[name], value), name
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=3), model.get_velocity(n_samples=3))
