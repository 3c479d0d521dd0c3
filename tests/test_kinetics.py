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


# ---- kinetics objects ------------------------------------------------------------------------------------

TD_NAMES = ("alpha", "alpha_1", "lambda_alpha", "beta", "gamma")


def _td_reference(alpha, alpha_1, lam, beta, gamma, t_s, t_eval, digits=50):
    """Exact solution of the time-dependent kinetics: du/dt = a(t) 1[t < t_s] - beta u, ds/dt = beta u - gamma s
    with a(t) = alpha_1 - (alpha_1 - alpha) exp(-lam t), from (0, 0), in 50-digit arithmetic.

    The input is itself the solution of a linear ODE, so the augmented state ``(u, s, 1, w)`` with
    ``w = exp(-lam t)`` evolves by the matrix exponential of
    ``[[-beta, 0, alpha_1, alpha - alpha_1], [beta, -gamma, 0, 0], [0, 0, 0, 0], [0, 0, 0, -lam]]``: exact, and
    independent of the closed form under test (no convolutions, no partial fractions, no equal-rate branch).
    After the switch the transcription columns are zero.
    """
    with mpmath.workdps(digits):
        a, a1, lm, b, g, ts = (mpmath.mpf(float(x)) for x in (alpha, alpha_1, lam, beta, gamma, t_s))

        def propagate(y, on, dt):
            m = mpmath.matrix([[-b, 0, a1 * on, (a - a1) * on], [b, -g, 0, 0], [0, 0, 0, 0], [0, 0, 0, -lm]])
            return mpmath.expm(m * dt) * y

        y0 = mpmath.matrix([0, 0, 1, 1])
        y_switch = propagate(y0, 1, ts)
        out = np.empty((len(t_eval), 2))
        for i, t in enumerate(t_eval):
            t = mpmath.mpf(float(t))
            y = propagate(y0, 1, t) if t <= ts else propagate(y_switch, 0, t - ts)
            out[i] = float(y[0]), float(y[1])
    return out


def _td_cases():
    rng = np.random.default_rng(3)
    cases = [tuple(rng.uniform(0.05, 20, 5)) for _ in range(6)]
    b = 1.7
    cases += [
        (0.3, 2.0, 0.8, b, b),  # gamma == beta
        (0.3, 2.0, 0.8, b, b + 4e-9),  # gamma - beta ~ 1e-9
        (0.3, 2.0, b, b, 0.6),  # lambda == beta
        (0.3, 2.0, 0.6, b, 0.6),  # lambda == gamma
        (0.3, 2.0, b, b, b),  # all three equal
        (0.3, 2.0, b + 2e-9, b - 1e-9, b + 5e-10),  # all three within 1e-9
        (2.0, 2.0, 0.7, 1.2, 0.4),  # alpha == alpha_1: the constant kinetics
        (5.0, 0.2, 0.5, 0.9, 1.3),  # transcription decreasing
        (1e-3, 3.0, 1e-4, 0.5, 0.2),  # alpha << alpha_1 and lambda t << 1
        (0.5, 40.0, 49.0, 50.0, 50.0),  # large equal rates
        (0.5, 1.0, 0.01, 0.01, 50.0),  # extreme ratios
    ]
    return cases


@pytest.mark.parametrize("rates", _td_cases())
def test_time_dependent_matches_exact_reference(rates):
    t_s = 8.1
    t = np.concatenate([[1e-4, 0.02], np.linspace(0.0, T_MAX, 41)])
    ref = _td_reference(*rates, t_s, t)
    dt = torch.float64
    r = {k: torch.tensor([v], dtype=dt) for k, v in zip(TD_NAMES, rates, strict=True)}
    r["t_s"] = torch.tensor([t_s], dtype=dt)
    kin = K.get_kinetics("time_dependent")()
    u, s = kin.trajectory(torch.tensor(t, dtype=dt)[:, None], r)
    got = np.stack([u[:, 0].numpy(), s[:, 0].numpy()], axis=1)
    assert np.isfinite(got).all()
    err = np.abs(got - ref) / (np.abs(ref) + 1e-14 * np.abs(ref).max(axis=0))
    assert err.max() < TOL, (err.max(), np.unravel_index(err.argmax(), err.shape))


def test_time_dependent_matches_mpmath_ode_solver():
    """A second, numerical reference: mpmath's Taylor-series ODE solver at 30 digits on the ODE as written."""
    alpha, alpha_1, lam, beta, gamma = 0.4, 2.5, 0.9, 1.1, 0.6
    with mpmath.workdps(30):
        f = mpmath.odefun(lambda t, y: [alpha_1 - (alpha_1 - alpha) * mpmath.exp(-lam * t) - beta * y[0],
                                        beta * y[0] - gamma * y[1]], 0, [0, 0])
        ref = np.array([[float(x) for x in f(t)] for t in (0.5, 2.0, 6.0)])
    r = {k: torch.tensor(v, dtype=torch.float64) for k, v in zip(TD_NAMES, (alpha, alpha_1, lam, beta, gamma),
                                                                  strict=True)}
    u, s = K.get_kinetics("time_dependent")().induction(torch.tensor([0.5, 2.0, 6.0], dtype=torch.float64), r)
    np.testing.assert_allclose(np.stack([u.numpy(), s.numpy()], 1), ref, rtol=1e-12)


def test_exp_convolution_against_chain_matrix_exponential():
    """C(x_0..x_n; t) is the (n, 0) entry of expm(t A) for the decay chain A (diagonal -x_i, subdiagonal 1)."""
    cases = [(0.3, 1.2, 4.0), (1.0, 1.0, 1.0), (1.0, 1.0 + 1e-9, 1.0 - 2e-9), (0.0, 0.5, 0.5, 3.0), (0.0, 0.0, 2.0),
             (2.0, 2.0 + 3e-4, 2.0 + 6e-4, 2.0 + 9e-4), (0.0, 1e-5, 50.0, 50.0)]
    for xs in cases:
        for t in (0.01, 1.0, 7.5, 20.0):
            with mpmath.workdps(50):
                n = len(xs)
                a = mpmath.matrix(n, n)
                for i, x in enumerate(xs):
                    a[i, i] = -mpmath.mpf(x)
                    if i:
                        a[i, i - 1] = 1
                ref = float(mpmath.expm(a * t)[n - 1, 0])
            got = K.exp_convolution([torch.tensor(x, dtype=torch.float64) for x in xs],
                                    torch.tensor(t, dtype=torch.float64)).item()
            assert abs(got - ref) <= 1e-11 * abs(ref) + 1e-300, (xs, t, got, ref)
            # float32: the series cutoff adapts, so near-equal rates stay accurate to float32 precision
            got32 = K.exp_convolution([torch.tensor(x) for x in xs], torch.tensor(t)).item()
            assert abs(got32 - ref) <= 2e-5 * abs(ref) + 1e-30, (xs, t, got32, ref)


def test_time_dependent_velocities_steady_state_and_continuity():
    dt = torch.float64
    gen = torch.Generator().manual_seed(5)
    g = 40
    r = {k: torch.rand(g, generator=gen, dtype=dt) * 3 + 0.05 for k in TD_NAMES}
    r["gamma"][:10] = r["beta"][:10]
    r["lambda_alpha"][10:20] = r["beta"][10:20]
    r["t_s"] = torch.rand(g, generator=gen, dtype=dt) * 10 + 2
    kin = K.get_kinetics("time_dependent")()
    t_ind = torch.rand(g, generator=gen, dtype=dt) * r["t_s"]
    t_rep = r["t_s"] + torch.rand(g, generator=gen, dtype=dt) * (T_MAX - r["t_s"])
    h = 1e-6
    up, sp = kin.state_means(t_ind + h, t_rep + h, r)
    um, sm = kin.state_means(t_ind - h, t_rep - h, r)
    u, s = kin.state_means(t_ind, t_rep, r)
    du, ds = kin.state_velocities(u, s, t_ind, r)
    for k in (0, 2):
        torch.testing.assert_close(du[..., k], ((up - um) / (2 * h))[..., k], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ds[..., k], ((sp - sm) / (2 * h))[..., k], rtol=1e-6, atol=1e-8)
    assert (du[..., (1, 3)] == 0).all() and (ds[..., (1, 3)] == 0).all()
    # the induction steady state is the limit of induction; repression starts at the switch point
    u_inf, s_inf = kin.induction(torch.full((g,), 1e4, dtype=dt), r)
    u_ss, s_ss = kin.steady_state(r)
    torch.testing.assert_close(u_inf, u_ss)
    torch.testing.assert_close(s_inf, s_ss)
    u_sw, s_sw = kin.state_means(r["t_s"], r["t_s"], r)
    torch.testing.assert_close(u_sw[..., 0], u_sw[..., 2])
    torch.testing.assert_close(s_sw[..., 0], s_sw[..., 2])


def test_time_dependent_gradients_finite_and_match_finite_differences():
    dt = torch.float64
    # gamma == beta, lambda == beta, all equal, within 1e-9, and the constant case alpha == alpha_1
    cols = torch.tensor([
        [0.3, 2.0, 0.8, 1.7, 1.7],
        [0.3, 2.0, 1.7, 1.7, 0.6],
        [0.3, 2.0, 1.7, 1.7, 1.7],
        [0.3, 2.0, 1.7 + 1e-9, 1.7, 1.7 - 1e-9],
        [2.0, 2.0, 0.7, 1.2, 0.4],
        [0.5, 40.0, 49.0, 50.0, 50.0],
    ], dtype=dt).T
    params = [c.clone().requires_grad_(True) for c in cols]
    t_s = torch.tensor([7.0, 5.0, 5.0, 12.0, 9.0, 19.0], dtype=dt, requires_grad=True)
    t = torch.tensor([3.0, 9.0, 2.0, 15.0, 0.5, 19.5], dtype=dt)
    kin = K.get_kinetics("time_dependent")()

    def f(*p):
        r = dict(zip(TD_NAMES, p[:-1], strict=True)) | {"t_s": p[-1]}
        u, s = kin.trajectory(t, r)
        return (u + 2 * s).sum()

    assert torch.autograd.gradcheck(f, (*params, t_s), eps=1e-7, atol=1e-6, rtol=1e-5)
    # float32 (training precision): finite gradients at exactly equal rates
    p32 = [c.float().requires_grad_(True) for c in cols]
    f(*p32, t_s.detach().float().requires_grad_(True)).backward()
    assert all(torch.isfinite(p.grad).all() for p in p32)


def test_constant_kinetics_object_equals_the_pure_functions():
    """The default kinetics object computes exactly (bit for bit) what the pure functions of eq. 1-12 compute."""
    gen = torch.Generator().manual_seed(7)
    kin = K.get_kinetics("constant")(30, np.linspace(0.1, 2.0, 30).astype(np.float32), seed=3)
    with torch.no_grad():
        for p in kin.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        r = kin.rates()
        assert list(r) == ["alpha", "beta", "gamma", "t_s"]
        t_ind = torch.rand(8, 30, generator=gen) * r["t_s"]
        t_rep = r["t_s"] + torch.rand(8, 30, generator=gen) * (T_MAX - r["t_s"])
        u, s = kin.state_means(t_ind, t_rep, r)
        u0, s0 = K.state_means(t_ind, t_rep, r["alpha"], r["beta"], r["gamma"], r["t_s"])
        assert torch.equal(u, u0) and torch.equal(s, s0)
        du, ds = kin.state_velocities(u, s, t_ind, r)
        du0, ds0 = K.state_velocities(u, s, r["alpha"], r["beta"], r["gamma"])
        assert torch.equal(du, du0) and torch.equal(ds, ds0)
        t = torch.rand(8, 30, generator=gen) * T_MAX
        assert all(torch.equal(a, b) for a, b in zip(kin.trajectory(t, r),
                                                     K.trajectory(t, r["alpha"], r["beta"], r["gamma"], r["t_s"]),
                                                     strict=True))
        assert all(torch.equal(a, b) for a, b in zip(kin.switch_point(r),
                                                     K.switch_point(r["alpha"], r["beta"], r["gamma"], r["t_s"]),
                                                     strict=True))


def test_registry():
    assert {"constant", "time_dependent"} <= set(K.KINETICS)
    assert K.get_kinetics("constant") is K.ConstantKinetics
    with pytest.raises(ValueError, match="kinetics must be one of"):
        K.get_kinetics("nope")

    class Unregistered(K.ConstantKinetics):
        name = "unregistered_test_kinetics"

    with pytest.raises(ValueError, match="not registered"):
        K.get_kinetics(Unregistered)

    class Nameless(K.Kinetics):
        pass

    with pytest.raises(TypeError, match="name and rate_names"):
        K.register_kinetics(Nameless)
    # the time-dependent kinetics starts as the constant one (alpha_1 = alpha)
    td = K.get_kinetics("time_dependent")(5, np.full(5, 0.8, np.float32))
    c = K.get_kinetics("constant")(5, np.full(5, 0.8, np.float32))
    rt, rc = td.rates(), c.rates()
    t = torch.linspace(0.0, 19.0, 5)[:, None]
    torch.testing.assert_close(td.trajectory(t, rt), c.trajectory(t, rc), rtol=1e-5, atol=1e-6)
