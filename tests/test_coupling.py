"""State coupling strategies (velopyro.coupling): closed forms against brute force, registry, model sites."""

from __future__ import annotations

import itertools

import pytest
import torch
from pyro import poutine

from velopyro import coupling as cp
from velopyro.datasets import simulate


def _terms(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(torch.randn(3, 2, 4, generator=gen, dtype=torch.float64), -1)
    return pi.log(), torch.randn(3, 2, 4, generator=gen, dtype=torch.float64), \
        torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)


def test_mixture_log_likelihood_against_enumeration() -> None:
    log_pi, lu, ls = _terms()
    pi, pu, ps = log_pi.exp(), lu.exp(), ls.exp()
    shared = sum(pi[..., k] * pu[..., k] * ps[..., k] for k in range(4)).log()
    indep = sum(pi[..., j] * pu[..., j] * pi[..., k] * ps[..., k] for j, k in itertools.product(range(4), repeat=2))
    torch.testing.assert_close(cp.Shared().mixture_log_likelihood(log_pi, lu, ls), shared)
    torch.testing.assert_close(cp.Independent().mixture_log_likelihood(log_pi, lu, ls), indep.log())


def test_posterior_states_follow_the_conditional() -> None:
    log_pi, lu, ls = _terms(1)
    torch.manual_seed(0)
    draws = torch.stack([cp.Shared().posterior_states(log_pi, lu, ls)["k"] for _ in range(4000)])
    freq = torch.nn.functional.one_hot(draws, 4).double().mean(0)
    torch.testing.assert_close(freq, torch.softmax(log_pi + lu + ls, -1), rtol=0, atol=0.03)
    ind = cp.Independent().posterior_states(log_pi, lu, ls)
    assert set(ind) == set(cp.Independent.sites) and ind["k_u"].shape == (3, 2)


def test_registry_and_errors() -> None:
    assert set(cp.STATE_COUPLINGS) == {"independent", "shared"}
    assert cp.get_state_coupling("shared") is cp.STATE_COUPLINGS["shared"]
    obj = cp.Independent()
    assert cp.get_state_coupling(obj) is obj
    with pytest.raises(ValueError, match="state_coupling must be one of"):
        cp.get_state_coupling("coupled")


@pytest.mark.parametrize("name", ["independent", "shared"])
def test_the_model_samples_the_strategy_sites(name: str) -> None:
    import velopyro

    vp = velopyro.VeloPyro(simulate(40, 3), n_hidden=8, state_coupling=name)
    assert vp.model.coupling is cp.STATE_COUPLINGS[name]
    args = vp.data.batch(torch.arange(5), torch.device("cpu"))
    tr = poutine.trace(vp.model).get_trace(*args, n_cells=40)
    states = {n for n, site in tr.nodes.items() if n.startswith("k")}
    assert states == set(cp.STATE_COUPLINGS[name].sites)
