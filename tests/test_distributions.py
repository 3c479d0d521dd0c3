"""The lean distributions of velopyro.distributions give torch's densities and gradients."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex
from torch.autograd.functional import jacobian

from velopyro import distributions as vd
from velopyro.model import select_state

#: torch's TracerWarning for a Python branch on a tensor's size under torch.jit.trace
TRACED_CHECKS = "ignore:Converting a tensor to a Python boolean might cause the trace:torch.jit.TracerWarning"

def test_compact_drops_only_broadcast_dims():
    base = torch.randn(4, 1, 7)
    full = base.expand(4, 5, 7)
    c = vd.compact(full)
    assert c.shape == (4, 1, 7)
    assert torch.equal(c.expand_as(full), full)
    dense = torch.randn(3, 5)
    assert vd.compact(dense) is dense


def test_normal_matches_torch_with_broadcast_scale():
    torch.manual_seed(0)
    loc = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(4, 1, 5, dtype=torch.float64) + 0.1).requires_grad_()
    x = torch.randn(6, 5, dtype=torch.float64)
    ours = vd.Normal(loc, scale).log_prob(x)
    ref = torch.distributions.Normal(loc, scale).log_prob(x)
    assert torch.allclose(ours, ref, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), (loc, scale))
    g2 = torch.autograd.grad(ref.sum(), (loc, scale))
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_dirichlet_prior_matches_torch_when_expanded():
    torch.manual_seed(0)
    conc = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    pi = dist.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((6, 5))
    ours = vd.Dirichlet(conc).expand([6, 5]).log_prob(pi)
    ref = torch.distributions.Dirichlet(conc).expand([6, 5]).log_prob(pi)
    assert torch.allclose(ours, ref, atol=1e-10)
    # non-constant concentrations too
    conc2 = torch.rand(6, 5, 4, dtype=torch.float64) + 0.1
    assert torch.allclose(vd.Dirichlet(conc2).log_prob(pi), torch.distributions.Dirichlet(conc2).log_prob(pi))


@pytest.mark.parametrize("scale_dim", [1, 3])
def test_logistic_normal_density_is_normal_times_jacobian(scale_dim):
    """log q(pi) = log N(alr(pi)) + log |d alr / d pi_{1:3}|, the change of variables, on fresh and cached values."""
    torch.manual_seed(1)
    loc = torch.randn(5, 3, dtype=torch.float64)
    scale = torch.rand(5, scale_dim, dtype=torch.float64) + 0.2
    d = vd.LogisticNormal(loc, scale)
    pi = d.rsample()
    assert pi.shape == (5, 4) and torch.allclose(pi.sum(-1), torch.ones(5, dtype=torch.float64))

    def alr(x3):
        x = torch.cat([x3, 1 - x3.sum(-1, keepdim=True)])
        return torch.log(x[:3] / x[3])

    ref = []
    for i in range(5):
        y = alr(pi[i, :3])
        log_n = torch.distributions.Normal(loc[i], scale[i].expand(3)).log_prob(y).sum()
        ref.append(log_n + torch.linalg.slogdet(jacobian(alr, pi[i, :3]))[1])
    ref = torch.stack(ref)
    assert torch.allclose(d.log_prob(pi), ref, atol=1e-8)  # the cached draw
    assert torch.allclose(d.log_prob(pi.clone()), ref, atol=1e-8)  # any other tensor


def test_logistic_normal_cached_gradient_equals_recomputed():
    """Scoring the latest draw through its Gaussian variate gives the same gradient as inverting the map."""
    torch.manual_seed(2)
    loc = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(8, 1, dtype=torch.float64, requires_grad=True)
    d = vd.LogisticNormal(loc, torch.nn.functional.softplus(raw) + 0.1)
    pi = d.rsample()
    cached = torch.autograd.grad(d.log_prob(pi).sum(), (loc, raw), retain_graph=True)
    log_pi = pi.log()
    y = log_pi[..., :-1] - log_pi[..., -1:]
    sc = d.scale.expand_as(y)
    direct = (torch.distributions.Normal(d.loc, sc).log_prob(y).sum(-1) - log_pi.sum(-1)).sum()
    recomputed = torch.autograd.grad(direct, (loc, raw))
    for a, b in zip(cached, recomputed, strict=True):
        assert torch.allclose(a, b, atol=1e-8)


def test_logistic_normal_expand_and_mean_mc():
    d = vd.LogisticNormal(torch.zeros(3), torch.ones(1)).expand([2, 5])
    assert d.batch_shape == (2, 5) and d.event_shape == (4,)
    draws = d.sample((4000,))
    assert draws.shape == (4000, 2, 5, 4)
    # symmetric loc: the first three components are exchangeable
    m = draws.mean((0, 1, 2))
    assert torch.allclose(m[:3], m[:3].mean().expand(3), atol=0.02)
    assert math.isfinite(float(d.log_prob(draws[0]).sum()))


def test_select_state_matches_vindex():
    x = torch.randn(5, 7, 4)
    cases = [torch.arange(4).view(4, 1, 1), torch.arange(4).view(4, 1, 1, 1), torch.randint(0, 4, (5, 7)),
             torch.randint(0, 4, (3, 5, 7)), torch.tensor([3, 2, 1, 0]).view(4, 1, 1)]
    for k in cases:
        a, b = select_state(x, k), Vindex(x)[..., k]
        assert a.shape == b.shape and torch.equal(a, b)


def test_parallel_dirichlet_draws_gradients_and_seed(monkeypatch):
    """The multi-threaded CPU sampler: right moments, torch's implicit gradient, reproducible by seed."""
    from torch.distributions.dirichlet import _Dirichlet_backward

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # take the threaded path on any machine
    c = torch.tensor([0.3, 1.0, 2.0, 0.1]).expand(100_000, 4).contiguous()
    x = vd.SafeDirichlet(c).rsample()
    a0 = c.sum(-1, keepdim=True)
    assert torch.allclose(x.mean(0), (c / a0)[0], atol=3e-3)
    assert torch.allclose(x.var(0), (c * (a0 - c) / (a0**2 * (a0 + 1)))[0], atol=2e-3)
    torch.manual_seed(3)
    x1 = vd.SafeDirichlet(c).rsample()
    torch.manual_seed(3)
    assert torch.equal(x1, vd.SafeDirichlet(c).rsample())
    cc = (torch.rand(300, 200, 4) + 0.2).requires_grad_()
    x = vd.SafeDirichlet(cc).rsample()
    w = torch.randn_like(x)
    (g,) = torch.autograd.grad((x * w).sum(), cc)
    assert torch.allclose(g, _Dirichlet_backward(x.detach(), cc.detach(), w), atol=1e-6)


# the sampler's size and device checks, traced as constants: intended (one trace per shape)
@pytest.mark.filterwarnings(TRACED_CHECKS)
def test_parallel_dirichlet_is_traced_by_jit_and_replays_fresh_draws(monkeypatch):
    """``fit(jit=True)`` traces the ELBO: the threaded sampler must be one node of the graph, drawing anew
    on every call of the traced function, with torch's implicit gradient."""
    from torch.distributions.dirichlet import _Dirichlet_backward

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    w = torch.randn(100, 100, 4)

    def draw(c):
        return vd.SafeDirichlet(c).rsample()

    c = (torch.rand(100, 100, 4) + 0.2).requires_grad_()
    traced = torch.jit.trace(draw, (c,), check_trace=False)
    assert "velopyro::parallel_dirichlet" in str(traced.graph)
    x1, x2 = traced(c), traced(c)
    assert not torch.equal(x1, x2)
    torch.testing.assert_close(x1.sum(-1), torch.ones(100, 100))
    (g,) = torch.autograd.grad((x2 * w).sum(), c)
    torch.testing.assert_close(g, _Dirichlet_backward(x2.detach(), c.detach(), w), atol=1e-6, rtol=1e-5)


# the sampler's size and device checks, traced as constants: intended (one trace per shape)
@pytest.mark.filterwarnings(TRACED_CHECKS)
def test_jit_fit_with_the_threaded_dirichlet_guide(monkeypatch):
    """A JIT fit with the default Dirichlet q(pi | z) on the threaded path: finite, improving, reproducible."""
    import velopyro
    from velopyro.datasets import simulate

    monkeypatch.setattr(vd, "_MIN_PARALLEL", 1)  # take the threaded sampler at this small size
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    adata = simulate(200, 20, seed=1)
    losses = []
    for _ in range(2):
        m = velopyro.VeloPyro(adata, n_hidden=32)
        m.fit(max_epochs=6, batch_size=60, jit=True, progress_bar=False, seed=0, early_stopping=False)
        losses.append(np.asarray(m.history["train_loss"]))
    assert np.isfinite(losses[0]).all() and losses[0][-1] < losses[0][0]
    np.testing.assert_array_equal(losses[0], losses[1])


@pytest.mark.parametrize("expand", [False, True])
def test_count_log_probs_match_torch_under_enumeration(expand):
    """Poisson and NB log_prob (data-only terms once per minibatch) equal torch's, values and gradients,
    for an enumerated rate (4, B, G) scored against counts (B, G), and after Pyro's ``expand``."""
    torch.manual_seed(0)
    b, g = 7, 5
    x = torch.poisson(torch.rand(b, g) * 20.0)
    x[0, 0] = 0.0
    rate = (torch.rand(4, b, g) * 30.0 + 1e-3).requires_grad_()
    theta = (torch.rand(g) * 20.0 + 0.05).requires_grad_()

    def make(kind, lib):
        if kind == "poisson":
            d = lib.Poisson(rate)
        else:
            d = lib.NegativeBinomial(total_count=theta, logits=torch.log(rate) - torch.log(theta))
        return d.expand([2, 4, b, g]) if expand else d

    for kind in ("poisson", "nb"):
        ours, ref = make(kind, vd), make(kind, torch.distributions)
        assert type(ours) is (vd.Poisson if kind == "poisson" else vd.NegativeBinomial)
        a, r = ours.log_prob(x), ref.log_prob(x)
        assert a.shape == r.shape == ((2, 4, b, g) if expand else (4, b, g))
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
        params = (rate,) if kind == "poisson" else (rate, theta)
        ga = torch.autograd.grad(a.sum(), params)
        gr = torch.autograd.grad(make(kind, torch.distributions).log_prob(x).sum(), params)
        for g1, g2 in zip(ga, gr, strict=True):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-3)
    # small and large dispersions and counts, far from the test's typical values
    theta2 = torch.tensor([1e-3, 0.5, 1e3, 1e5])
    x2 = torch.tensor([[0.0, 3.0, 500.0, 2e4]])
    lg = torch.log(torch.tensor([[0.1, 7.0, 400.0, 1e4]])) - torch.log(theta2)
    torch.testing.assert_close(vd.NegativeBinomial(theta2, logits=lg).log_prob(x2),
                               torch.distributions.NegativeBinomial(theta2, logits=lg).log_prob(x2),
                               rtol=1e-5, atol=1e-3)
