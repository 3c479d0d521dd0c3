"""Kinetics (eq. 1-12) against numerical ODE integration, at and near gamma == beta."""

import mpmath
import numpy as np
import pytest
import torch

from velopyro import kinetics as K

T_MAX = 20.0
TOL = 1e-11  # relative; the closed forms reach ~4e-14 on these cases


def _reference(alpha, beta, gamma, t_s, t_eval, digits=50):
    """Exact solution of du/dt = alpha 1[t < t_s] - beta u, ds/dt = beta u - gamma s from (0, 0), by the
    matrix exponential of the augmented linear system in 50-digit arithmetic (mpmath).

    The state ``(u, s, 1)`` evolves by ``expm(A t)`` with ``A = [[-beta, 0, a], [beta, -gamma, 0], [0, 0, 0]]``:
    an independent derivation from the closed forms under test (no partial fractions, no gamma == beta branch;
    a Jordan block is just another matrix), and exact to far below float64's precision. (scipy's
    ``solve_ivp`` is not a usable reference: at rtol=1e-12 its absolute error on s near 4e-7 after long
    decay is ~1e-11, a relative error of 3.5e-5 that the closed form does not have.)
    """
    with mpmath.workdps(digits):
        a, b, g, ts = (mpmath.mpf(float(x)) for x in (alpha, beta, gamma, t_s))

        def propagate(y, a_, dt):
            m = mpmath.matrix([[-b, 0, a_], [b, -g, 0], [0, 0, 0]])
            return mpmath.expm(m * dt) * y

        y_switch = propagate(mpmath.matrix([0, 0, 1]), a, ts)
        out = np.empty((len(t_eval), 2))
        for i, t in enumerate(t_eval):
            t = mpmath.mpf(float(t))
            y = propagate(mpmath.matrix([0, 0, 1]), a, t) if t <= ts else propagate(y_switch, 0, t - ts)
            out[i] = float(y[0]), float(y[1])
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
def test_trajectory_matches_exact_reference(alpha, beta, gamma):
    t_s = 7.3
    t = np.linspace(0.0, T_MAX, 81)
    ref = _reference(alpha, beta, gamma, t_s, t)
    dt = torch.float64
    u, s = K.trajectory(torch.tensor(t, dtype=dt), torch.tensor(alpha, dtype=dt),
                        torch.tensor(beta, dtype=dt), torch.tensor(gamma, dtype=dt),
                        torch.tensor(t_s, dtype=dt))
    got = np.stack([u.numpy(), s.numpy()], axis=1)
    assert np.isfinite(got).all()
    # relative error against an exact reference, with an absolute floor far below float64 noise of the
    # largest value (values that decayed to ~1e-300 cannot carry relative accuracy in float64)
    err = np.abs(got - ref) / (np.abs(ref) + 1e-14 * np.abs(ref).max(axis=0))
    assert err.max() < TOL, (err.max(), np.unravel_index(err.argmax(), err.shape))


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
