"""Kinetics (eq. 1-12) against numerical ODE integration, at and near gamma == beta."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from velopyro import kinetics as K

T_MAX = 20.0


def _ode(alpha_of_t):
    def rhs(t, y, beta, gamma):
        u, s = y
        return [alpha_of_t(t) - beta * u, beta * u - gamma * s]

    return rhs


def _integrate(alpha, beta, gamma, t_s, t_eval):
    rhs = _ode(lambda t: alpha if t < t_s else 0.0)
    # integrate the two phases separately so the switch is hit exactly
    out = np.empty((len(t_eval), 2))
    before = t_eval <= t_s
    sol1 = solve_ivp(rhs, (0, t_s), [0.0, 0.0], args=(beta, gamma), rtol=1e-12, atol=1e-14,
                     dense_output=True, method="DOP853")
    out[before] = sol1.sol(t_eval[before]).T
    y0 = sol1.y[:, -1]
    if (~before).any():
        sol2 = solve_ivp(rhs, (t_s, T_MAX + 1), y0, args=(beta, gamma), rtol=1e-12, atol=1e-14,
                         dense_output=True, method="DOP853")
        out[~before] = sol2.sol(t_eval[~before]).T
    return out


def _rates_cases():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(12):
        alpha, beta, gamma = rng.uniform(0.05, 50, 3)
        cases.append((alpha, beta, gamma))
    b = rng.uniform(0.1, 10)
    cases.append((1.3, b, b))  # exactly equal
    cases.append((2.0, b, b + 5e-8))  # |gamma - beta| < 1e-7
    cases.append((2.0, b, b - 3e-8))
    cases.append((0.7, 50.0, 50.0))  # large equal rates
    cases.append((5.0, 0.01, 50.0))  # extreme ratio
    return cases


@pytest.mark.parametrize("alpha,beta,gamma", _rates_cases())
def test_trajectory_matches_solve_ivp(alpha, beta, gamma):
    t_s = 7.3
    t = np.linspace(0.0, T_MAX, 81)
    ref = _integrate(alpha, beta, gamma, t_s, t)
    dt = torch.float64
    u, s = K.trajectory(torch.tensor(t, dtype=dt), torch.tensor(alpha, dtype=dt),
                        torch.tensor(beta, dtype=dt), torch.tensor(gamma, dtype=dt),
                        torch.tensor(t_s, dtype=dt))
    got = np.stack([u.numpy(), s.numpy()], axis=1)
    scale = np.maximum(np.abs(ref), 1e-12 * np.abs(ref).max() + 1e-300)
    # relative error where the solution is not vanishingly small; absolute elsewhere
    significant = np.abs(ref) > 1e-8 * np.abs(ref).max()
    rel = np.abs(got - ref)[significant] / scale[significant]
    assert rel.max() < 1e-5, rel.max()
    assert np.isfinite(got).all()


def test_exp_diff_ratio_limit_and_float32():
    beta = torch.tensor([1.0, 1.0, 1.0, 50.0])
    gamma = torch.tensor([1.0, 1.0 + 1e-7, 1.0 - 1e-7, 50.0])
    tau = torch.tensor([3.0, 3.0, 3.0, 20.0])
    got = K.exp_diff_ratio(beta, gamma, tau)
    want = -tau * torch.exp(-beta * tau)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0.0)
    # no overflow or NaN for the largest rates and times
    b = torch.tensor([50.0, 0.01]).repeat(2)
    g = torch.tensor([0.01, 50.0]).repeat(2)
    x = K.exp_diff_ratio(b, g, torch.tensor([20.0, 20.0, 0.0, 0.0]))
    assert torch.isfinite(x).all()


def test_continuity_at_switch():
    dt = torch.float64
    g = 200
    gen = torch.Generator().manual_seed(1)
    alpha = torch.rand(g, generator=gen, dtype=dt) * 10 + 0.1
    beta = torch.rand(g, generator=gen, dtype=dt) * 10 + 0.1
    gamma = torch.rand(g, generator=gen, dtype=dt) * 10 + 0.1
    gamma[:20] = beta[:20]
    t_s = torch.rand(g, generator=gen, dtype=dt) * 18 + 1
    eps = 1e-9
    u_b, s_b = K.trajectory(t_s - eps, alpha, beta, gamma, t_s)
    u_a, s_a = K.trajectory(t_s + eps, alpha, beta, gamma, t_s)
    torch.testing.assert_close(u_b, u_a, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(s_b, s_a, rtol=1e-7, atol=1e-7)
    # the repression state of state_means starts at the switch point (eq. 9-10)
    u_bar, s_bar = K.state_means(t_s, t_s, alpha, beta, gamma, t_s)
    torch.testing.assert_close(u_bar[..., 0], u_bar[..., 2])
    torch.testing.assert_close(s_bar[..., 0], s_bar[..., 2])


@pytest.mark.parametrize("equal", [False, True])
def test_velocities_are_time_derivatives(equal):
    dt = torch.float64
    gen = torch.Generator().manual_seed(2)
    g = 50
    alpha = torch.rand(g, generator=gen, dtype=dt) * 5 + 0.1
    beta = torch.rand(g, generator=gen, dtype=dt) * 5 + 0.1
    gamma = beta.clone() if equal else torch.rand(g, generator=gen, dtype=dt) * 5 + 0.1
    t_s = torch.rand(g, generator=gen, dtype=dt) * 10 + 2
    t_ind = torch.rand(g, generator=gen, dtype=dt) * t_s
    t_rep = t_s + torch.rand(g, generator=gen, dtype=dt) * (T_MAX - t_s)
    h = 1e-6
    up, sp = K.state_means(t_ind + h, t_rep + h, alpha, beta, gamma, t_s)
    um, sm = K.state_means(t_ind - h, t_rep - h, alpha, beta, gamma, t_s)
    u, s = K.state_means(t_ind, t_rep, alpha, beta, gamma, t_s)
    du, ds = K.state_velocities(u, s, alpha, beta, gamma)
    fd_u, fd_s = (up - um) / (2 * h), (sp - sm) / (2 * h)
    for k in (0, 2):
        torch.testing.assert_close(du[..., k], fd_u[..., k], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ds[..., k], fd_s[..., k], rtol=1e-6, atol=1e-8)
    for k in (1, 3):
        assert (du[..., k] == 0).all() and (ds[..., k] == 0).all()


def test_gradients_finite_and_match_finite_differences():
    dt = torch.float64
    # includes gamma == beta exactly and within 1e-8
    beta = torch.tensor([0.5, 2.0, 2.0, 3.0, 49.0], dtype=dt, requires_grad=True)
    gamma = torch.tensor([0.31, 2.0, 2.0 + 1e-8, 7.0, 49.0], dtype=dt, requires_grad=True)
    alpha = torch.tensor([1.0, 2.0, 3.0, 0.5, 40.0], dtype=dt, requires_grad=True)
    t_s = torch.tensor([7.0, 5.0, 5.0, 12.0, 19.0], dtype=dt, requires_grad=True)
    t = torch.tensor([3.0, 9.0, 2.0, 15.0, 19.5], dtype=dt)

    def f(a, b, g, ts):
        u, s = K.trajectory(t, a, b, g, ts)
        return (u + 2 * s).sum()

    assert torch.autograd.gradcheck(f, (alpha, beta, gamma, t_s), eps=1e-7, atol=1e-6, rtol=1e-5)
