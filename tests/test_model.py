"""The Pyro model and guide: enumeration, shapes, minibatch scaling, observations absent."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from velopyro import kinetics
from velopyro.guide import VeloVIGuide
from velopyro.likelihoods import Normal
from velopyro.model import VeloVIModel, switch_targets

N, G = 24, 5


def _build(coupling, pi_guide="dirichlet", n=N, g=G, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    u = rng.random((n, g)).astype(np.float32)
    s = rng.random((n, g)).astype(np.float32)
    lik = Normal()
    lik.setup(u, s, np.ones(n, np.float32), np.ones(n, np.float32))
    us, ss = switch_targets(u, s)
    model = VeloVIModel(g, lik, us, ss, n_hidden=16, state_coupling=coupling)
    guide = VeloVIGuide(g, 10, lik, pi_guide=pi_guide, n_hidden=16)
    model.eval()
    guide.eval()
    ones = torch.ones(n, 1)
    return model, guide, torch.from_numpy(u), torch.from_numpy(s), ones


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_enumerated_elbo_equals_hand_logsumexp(coupling):
    model, guide, u, s, ones = _build(coupling)
    idx = torch.arange(N)
    args = (idx, u, s, ones, ones)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(model, guide, *args)
    pyro.set_rng_seed(3)
    g_tr = poutine.trace(guide).get_trace(*args)  # the same draws of z and pi
    z = g_tr.nodes["z"]["value"]
    pi = g_tr.nodes["pi"]["value"]
    log_q = g_tr.log_prob_sum()
    with torch.no_grad():
        r = model.rates()
        ks = model.kinetic_state(z.squeeze(-2), r)
        c = torch.tensor([1.0, 1.0, 1.0, 0.1])
        sig_u, sig_s = model.likelihood.sigma("u"), model.likelihood.sigma("s")
        lu = torch.distributions.Normal(ks["u_bar"], c * sig_u[:, None]).log_prob(u[..., None])  # (N, G, 4)
        ls = torch.distributions.Normal(ks["s_bar"], c * sig_s[:, None]).log_prob(s[..., None])
        log_pi = pi.log()
        if coupling == "shared":
            ll = torch.logsumexp(log_pi + lu + ls, -1).sum()
        else:
            ll = torch.logsumexp(log_pi + lu, -1).sum() + torch.logsumexp(log_pi + ls, -1).sum()
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        log_ppi = torch.distributions.Dirichlet(torch.full((4,), 0.25)).log_prob(pi).sum()
        u0, s0 = kinetics.switch_point(r["alpha"], r["beta"], r["gamma"], r["t_s"])
        penalty = N * 0.2 * ((u0 - model.u_star) ** 2 + (s0 - model.s_star) ** 2).sum()
        elbo = log_pz + log_ppi + ll - penalty - log_q
    assert loss == pytest.approx(-elbo.item(), rel=1e-5)


def test_shared_and_independent_differ():
    m1, g1, u, s, ones = _build("shared")
    m2, _, _, _, _ = _build("independent")
    m2.load_state_dict(m1.state_dict())
    args = (torch.arange(N), u, s, ones, ones)
    pyro.set_rng_seed(0)
    l1 = TraceEnum_ELBO(max_plate_nesting=2).loss(m1, g1, *args)
    pyro.set_rng_seed(0)
    l2 = TraceEnum_ELBO(max_plate_nesting=2).loss(m2, g1, *args)
    assert l1 != pytest.approx(l2)


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_site_shapes_under_enumeration(coupling):
    model, guide, u, s, ones = _build(coupling)
    b = 8
    idx = torch.arange(b)
    args = (idx, u[:b], s[:b], ones[:b], ones[:b])
    g_tr = poutine.trace(guide).get_trace(*args, n_cells=N)
    enum_model = poutine.enum(model, first_available_dim=-3)
    tr = poutine.trace(poutine.replay(enum_model, g_tr)).get_trace(*args, n_cells=N)
    tr.compute_log_prob()
    shapes = tr.format_shapes()
    assert "switch_penalty" in shapes
    assert tr.nodes["z"]["value"].shape == (b, 1, 10)
    assert tr.nodes["pi"]["value"].shape == (b, G, 4)
    ks = ["k"] if coupling == "shared" else ["k_u", "k_s"]
    for name in ks:
        val = tr.nodes[name]["value"]
        assert val.numel() == 4 and val.dim() >= 3  # enumerated at dim -3 (or -4), never sampled
    assert tr.nodes["u"]["log_prob"].shape[-3:] == (4, b, G)
    assert tr.nodes["s"]["log_prob"].shape[-2:] == (b, G)
    # the cells plate is subsampled: every site inside it is scaled by N / b
    assert tr.nodes["u"]["scale"] == pytest.approx(N / b)
    assert tr.nodes["switch_penalty"]["scale"] == 1.0


@pytest.mark.parametrize("coupling", ["shared", "independent"])
def test_minibatch_elbo_is_unbiased_for_full_data_elbo(coupling):
    """Averaged over a partition into minibatches, the N/B-scaled minibatch loss equals the full loss."""
    model, _, u, s, ones = _build(coupling)
    # fix the guide's draws per cell so minibatch and full-data losses see the same z and pi
    torch.manual_seed(1)
    z_all = torch.randn(N, 1, 10)
    pi_all = dist.Dirichlet(torch.ones(4)).sample((N, G))
    elbo = TraceEnum_ELBO(max_plate_nesting=2)

    def fixed_guide(idx, u, s, sfu, sfs, kl_weight=1.0, penalty_weight=1.0, n_cells=None):
        with pyro.plate("cells", n_cells, subsample=idx, dim=-2):
            pyro.sample("z", dist.Delta(z_all[idx], event_dim=1))
            with pyro.plate("genes", G, dim=-1):
                pyro.sample("pi", dist.Delta(pi_all[idx], event_dim=1))

    def loss(idx):
        return elbo.loss(model, fixed_guide, idx, u[idx], s[idx], ones[idx], ones[idx], n_cells=N)

    full = loss(torch.arange(N))
    perm = torch.randperm(N)
    batches = perm.view(4, N // 4)
    mean_mb = np.mean([loss(b) for b in batches])
    assert mean_mb == pytest.approx(full, rel=1e-5)
    # a single minibatch is a different (noisy) estimate, so the test can fail if scaling were wrong
    assert loss(batches[0]) != pytest.approx(full, rel=1e-5)


def test_model_runs_without_observations():
    model, guide, u, s, ones = _build("shared")
    idx = torch.arange(6)
    g_tr = poutine.trace(guide).get_trace(idx, u[:6], s[:6], ones[:6], ones[:6], n_cells=N)
    tr = poutine.trace(poutine.replay(model, g_tr)).get_trace(idx, None, None, ones[:6], ones[:6], n_cells=N)
    assert tr.nodes["u"]["value"].shape == (6, G)
    assert not tr.nodes["u"]["is_observed"]
    assert tr.nodes["k"]["value"].shape == (6, G)  # k is sampled from Categorical(pi) here


def test_logistic_normal_guide_shapes():
    model, guide, u, s, ones = _build("independent", pi_guide="logistic_normal")
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(model, guide, torch.arange(N), u, s, ones, ones)
    assert np.isfinite(loss)
    pi = poutine.trace(guide).get_trace(torch.arange(N), u, s, ones, ones).nodes["pi"]["value"]
    torch.testing.assert_close(pi.sum(-1), torch.ones(N, G))


def test_switch_targets_use_top_percentile_cells():
    u = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 2))
    s = np.tile(np.arange(100, dtype=np.float32)[::-1, None], (1, 2))
    us, ss = switch_targets(u, s)
    assert us[0] == pytest.approx(99.0)  # only the top 1% (one cell) qualifies
    assert ss[0] == pytest.approx(0.0)  # s of the same cell


def test_per_gene_statistics_do_not_depend_on_the_chunking(monkeypatch):
    """switch_targets and the Normal's sigma start are computed in gene chunks; tiny chunks change nothing."""
    import velopyro._chunks
    from velopyro.likelihoods import _column_std
    from velopyro.model import switch_targets

    rng = np.random.default_rng(0)
    u, s = rng.gamma(1.0, size=(2, 300, 7)).astype(np.float32)
    whole = switch_targets(u, s), _column_std(u)
    monkeypatch.setattr(velopyro._chunks, "CHUNK_ENTRIES", 2 * 300)  # two genes per chunk, last one ragged
    assert len(list(velopyro._chunks.gene_slices(300, 7))) == 4
    chunked = switch_targets(u, s), _column_std(u)
    for a, b in zip((*whole[0], whole[1]), (*chunked[0], chunked[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(whole[1], u.std(0), rtol=1e-5)


def test_steady_state_ratio_recovers_the_simulated_gamma_over_beta():
    from scipy.stats import spearmanr

    from velopyro.datasets import simulate
    from velopyro.model import steady_state_ratio

    adata = simulate(n_cells=300, n_genes=20, seed=0)
    ratio = steady_state_ratio(adata.layers["Mu"], adata.layers["Ms"])
    truth = (adata.var["true_gamma"] / adata.var["true_beta"]).to_numpy()
    assert ratio.shape == (20,) and np.all(ratio > 0)
    assert spearmanr(ratio, truth)[0] > 0.9
    assert np.median(np.abs(np.log(ratio / truth))) < 0.2  # within ~20% for the typical gene


def test_rate_init_steady_state_sets_gamma_per_gene():
    import velopyro
    from velopyro.datasets import simulate
    from velopyro.model import steady_state_ratio

    adata = simulate(n_cells=200, n_genes=10, seed=0)
    const = velopyro.VeloPyro(adata, rate_init="constant").model.rates()
    ss = velopyro.VeloPyro(adata, rate_init="steady_state").model.rates()
    np.testing.assert_allclose(const["gamma"].detach().numpy(), 0.31, rtol=1e-5)
    want = 0.97 * steady_state_ratio(adata.layers["Mu"], adata.layers["Ms"])
    np.testing.assert_allclose(ss["gamma"].detach().numpy(), want, rtol=1e-4)
    with pytest.raises(ValueError, match="rate_init"):
        velopyro.VeloPyro(adata, rate_init="bogus")


def test_rate_init_auto_is_one_constant_start_for_every_likelihood():
    import velopyro
    from velopyro.datasets import simulate

    counts = simulate(n_cells=200, n_genes=10, seed=0, likelihood="poisson")
    model = velopyro.VeloPyro(counts, likelihood="poisson")
    np.testing.assert_allclose(model.model.rates()["gamma"].detach().numpy(), 0.31, rtol=1e-5)
    assert model._rate_starts() == ("constant",)
    normal = velopyro.VeloPyro(simulate(n_cells=200, n_genes=10, seed=0))
    assert normal._rate_starts() == ("constant",)  # the default fits once
    np.testing.assert_allclose(normal.model.rates()["gamma"].detach().numpy(), 0.31, rtol=1e-5)
    select = velopyro.VeloPyro(simulate(n_cells=200, n_genes=10, seed=0), rate_init="select")
    assert select._rate_starts() == ("constant", "steady_state")  # rate_init="select": fit() trains both
