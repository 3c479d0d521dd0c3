"""Closed-form transcription kinetics of veloVI (eq. 1-12) and their time derivatives.

This module is the only place the kinetic maths lives: the model's likelihood, velocity, latent time,
expression fit, the simulator and the plots all go through its kinetics objects (below), which are built on
these functions.

All functions are pure torch, broadcast over any leading shape (cells x genes x ...), and work in
float32 or float64. The one delicate term, ``(exp(-gamma tau) - exp(-beta tau)) / (gamma - beta)``,
is evaluated in a form that is exact at ``gamma == beta`` (the analytic limit ``-tau exp(-beta tau)``),
free of cancellation near it, and free of overflow for large rates and times (see :func:`exp_diff_ratio`).

States are indexed 0..3 in code and 1..4 in the paper:

==========  ===================================  =========================
code index  seed state k                         mean
==========  ===================================  =========================
0           1  induction                         eq. 3-4 at t in (0, t_s)
1           2  induction steady state            eq. 5-6
2           3  repression                        eq. 7-8 at t in (t_s, t_max)
3           4  repression steady state           eq. 11-12 (zero)
==========  ===================================  =========================

Kinetics as a swappable part
----------------------------
A :class:`Kinetics` object holds the per-gene rates as constrained parameters (``raw_<name>`` mapped into
``(0, RATE_MAX)``, the switch time into ``(0, t_max)``) and the closed forms built on them: the induction
solution, the steady states, the switch point (eq. 9-10), the repression solution, the per-state velocities
and the trajectory. The model (:mod:`velopyro.model`), the posterior (velocity), the simulator and the plots
ask it for all of these, so nothing else knows a rate by name. Kinetics are registered by name
(:func:`register_kinetics`, :func:`get_kinetics`; ``VeloPyro(adata, kinetics=name)``):

- ``"constant"`` (:class:`ConstantKinetics`, the default): veloVI's constant transcription rate alpha in
  induction and zero in repression (eq. 1-12), built on the pure functions of this module.
- ``"time_dependent"`` (:class:`TimeDependentKinetics`): velovi's ``time_dep_transcription_rate`` option,
  ``alpha(t) = alpha_1 - (alpha_1 - alpha) exp(-lambda_alpha t)`` during induction, with its exact closed
  form (see the class).

A new kinetics is one registered subclass that names its rates and writes :meth:`Kinetics.initial_rates`,
:meth:`Kinetics.transcription`, :meth:`Kinetics.induction` and :meth:`Kinetics.steady_state`
(the notebook ``tutorials/custom_kinetics.ipynb``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.distributions import constraints, transform_to

__all__ = [
    "N_STATES",
    "STATE_NAMES",
    "exp_diff_ratio",
    "one_minus_exp_ratio",
    "induction",
    "repression",
    "switch_point",
    "state_means",
    "state_velocities",
    "state_times",
    "trajectory",
    "exp_convolution",
    "RATE_MAX",
    "BETA_INIT",
    "Kinetics",
    "ConstantKinetics",
    "TimeDependentKinetics",
    "KINETICS",
    "register_kinetics",
    "get_kinetics",
]

N_STATES = 4
STATE_NAMES = ("induction", "induction_steady_state", "repression", "repression_steady_state")
#: Upper bound of every rate (as the reference's clamp at 50).
RATE_MAX = 50.0
#: The reference's initial splicing rate (softplus(0.5)).
BETA_INIT = 0.97

# Below this |x| the series branch is used; its truncation error is O(x^6 / 5040) < 1e-20.
_SERIES_CUTOFF = 1e-3


def one_minus_exp_ratio(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Return ``(1 - exp(-a t)) / a`` evaluated stably, including ``a -> 0`` (limit ``t``).

    Parameters
    ----------
    a
        Non-negative rate.
    t
        Non-negative time; broadcasts against ``a``.

    Returns
    -------
    torch.Tensor
        ``t * f(a t)`` with ``f(y) = -expm1(-y) / y`` and ``f(0) = 1``.
    """
    y = a * t
    small = y.abs() < _SERIES_CUTOFF
    y_safe = torch.where(small, torch.ones_like(y), y)
    f = torch.where(small, 1.0 - y / 2.0 + y * y / 6.0, -torch.expm1(-y_safe) / y_safe)
    return t * f


def exp_diff_ratio(beta: torch.Tensor, gamma: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Return ``(exp(-gamma tau) - exp(-beta tau)) / (gamma - beta)``, the kernel of eq. 2, 4 and 8.

    With ``m = min(beta, gamma)`` and ``y = |gamma - beta| tau`` the ratio equals
    ``-tau exp(-m tau) (1 - exp(-y)) / y``: every exponent is non-positive, so nothing overflows for
    rates up to 50 and times up to ``t_max``; at ``gamma == beta`` it is the analytic limit
    ``-tau exp(-beta tau)``. Near the limit (``|gamma - beta| tau / 2 < 1e-3``) the symmetric series
    ``-tau exp(-(beta + gamma) tau / 2) (1 + x^2/6 + x^4/120)``, ``x = (gamma - beta) tau / 2``, is used,
    which is analytic in both rates, so gradients are exact there too.

    Parameters
    ----------
    beta, gamma
        Positive splicing and degradation rates.
    tau
        Non-negative time since the start of the phase.

    Returns
    -------
    torch.Tensor
        The broadcast ratio.
    """
    x = 0.5 * (gamma - beta) * tau
    small = x.abs() < _SERIES_CUTOFF
    # series branch: exact in the limit, smooth in (beta, gamma)
    x2 = x * x
    series = -tau * torch.exp(-0.5 * (beta + gamma) * tau) * (1.0 + x2 / 6.0 + x2 * x2 / 120.0)
    # general branch, with the unused entries made harmless so no NaN reaches the gradient
    y = torch.where(small, torch.ones_like(x), 2.0 * x.abs())
    m = torch.minimum(beta, gamma)
    general = -tau * torch.exp(-m * tau) * (-torch.expm1(-y)) / y
    return torch.where(small, series, general)


def induction(
    t: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unspliced and spliced means in the induction phase (eq. 3-4), from ``u = s = 0`` at ``t = 0``.

    Parameters
    ----------
    t
        Time since the start of induction, ``t >= 0``.
    alpha, beta, gamma
        Transcription, splicing and degradation rates (broadcast against ``t``).

    Returns
    -------
    tuple of torch.Tensor
        ``(u, s)``.
    """
    u = alpha * one_minus_exp_ratio(beta, t)  # eq. 3
    s = alpha * one_minus_exp_ratio(gamma, t) + alpha * exp_diff_ratio(beta, gamma, t)  # eq. 4
    return u, s


def repression(
    tau: torch.Tensor,
    u0: torch.Tensor,
    s0: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unspliced and spliced means in the repression phase (eq. 7-8), ``alpha = 0``.

    Parameters
    ----------
    tau
        Time since the switch, ``t - t_s >= 0``.
    u0, s0
        State at the switch (eq. 9-10), see :func:`switch_point`.
    beta, gamma
        Splicing and degradation rates.

    Returns
    -------
    tuple of torch.Tensor
        ``(u, s)``.
    """
    u = u0 * torch.exp(-beta * tau)  # eq. 7
    s = s0 * torch.exp(-gamma * tau) - beta * u0 * exp_diff_ratio(beta, gamma, tau)  # eq. 8
    return u, s


def switch_point(
    alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, t_s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial condition of repression: the induction solution at the switch time (eq. 9-10).

    Parameters
    ----------
    alpha, beta, gamma
        Rates per gene.
    t_s
        Switch time per gene.

    Returns
    -------
    tuple of torch.Tensor
        ``(u0, s0)``, used by repression and by the switch penalty (eq. 27).
    """
    return induction(t_s, alpha, beta, gamma)


def state_times(
    rho_ind: torch.Tensor, rho_rep: torch.Tensor, t_s: torch.Tensor, t_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute times of the two transient states from the time heads (eq. 16-19).

    Parameters
    ----------
    rho_ind, rho_rep
        Outputs of ``h_ind(z)`` and ``h_rep(z)`` in (0, 1).
    t_s
        Switch time per gene, ``0 < t_s < t_max``.
    t_max
        The fixed time scale (20 in veloVI).

    Returns
    -------
    tuple of torch.Tensor
        ``(t_ind, t_rep)`` with ``t_ind = rho_ind t_s`` (eq. 17) and
        ``t_rep = (t_max - t_s) rho_rep + t_s`` (eq. 19).
    """
    t_ind = rho_ind * t_s
    t_rep = (t_max - t_s) * rho_rep + t_s
    return t_ind, t_rep


def state_means(
    t_ind: torch.Tensor,
    t_rep: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    t_s: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of u and s in each of the four states, stacked on a trailing state axis.

    Parameters
    ----------
    t_ind, t_rep
        Induction and repression times, shape ``(..., G)`` (see :func:`state_times`).
    alpha, beta, gamma, t_s
        Per-gene parameters, shape ``(G,)``.

    Returns
    -------
    tuple of torch.Tensor
        ``(u_bar, s_bar)``, each of shape ``(..., G, 4)`` in the order of :data:`STATE_NAMES`.
    """
    u_ind, s_ind = induction(t_ind, alpha, beta, gamma)  # eq. 3-4
    u_iss = alpha / beta  # eq. 5
    s_iss = alpha / gamma  # eq. 6
    u0, s0 = switch_point(alpha, beta, gamma, t_s)  # eq. 9-10
    u_rep, s_rep = repression(t_rep - t_s, u0, s0, beta, gamma)  # eq. 7-8
    zero = torch.zeros_like(u_ind)  # eq. 11-12
    u_bar = torch.stack([u_ind, u_iss.expand_as(u_ind), u_rep, zero], dim=-1)
    s_bar = torch.stack([s_ind, s_iss.expand_as(s_ind), s_rep, zero], dim=-1)
    return u_bar, s_bar


def state_velocities(
    u_bar: torch.Tensor,
    s_bar: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time derivatives ``du/dt = alpha_k - beta u`` and ``ds/dt = beta u - gamma s`` per state.

    The steady states (k = 2, 4) have zero velocity exactly; induction has ``alpha_k = alpha`` and
    repression ``alpha_k = 0`` (the ODE whose solutions are eq. 1-2).

    Parameters
    ----------
    u_bar, s_bar
        State means from :func:`state_means`, shape ``(..., G, 4)``.
    alpha, beta, gamma
        Per-gene rates, shape ``(G,)``.

    Returns
    -------
    tuple of torch.Tensor
        ``(du_dt, ds_dt)``, each ``(..., G, 4)``.
    """
    a, b, g = alpha.unsqueeze(-1), beta.unsqueeze(-1), gamma.unsqueeze(-1)
    transient = u_bar.new_tensor([1.0, 0.0, 1.0, 0.0])
    alpha_k = a * u_bar.new_tensor([1.0, 0.0, 0.0, 0.0])
    du = (alpha_k - b * u_bar) * transient
    ds = (b * u_bar - g * s_bar) * transient
    return du, ds


def trajectory(
    t: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    t_s: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of u and s along absolute time ``t``: induction before ``t_s``, repression after.

    Used by the simulator and to draw fitted phase-portrait curves.

    Parameters
    ----------
    t
        Absolute time, shape ``(..., G)`` or broadcastable to it.
    alpha, beta, gamma, t_s
        Per-gene parameters, shape ``(G,)``.

    Returns
    -------
    tuple of torch.Tensor
        ``(u, s)`` broadcast to the shape of ``t`` and the parameters.
    """
    u_i, s_i = induction(torch.minimum(t, t_s), alpha, beta, gamma)
    u0, s0 = switch_point(alpha, beta, gamma, t_s)
    u_r, s_r = repression(torch.clamp(t - t_s, min=0.0), u0, s0, beta, gamma)
    before = t < t_s
    return torch.where(before, u_i, u_r), torch.where(before, s_i, s_r)


def exp_convolution(rates: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """The convolution of the exponentials ``exp(-x_i t)``, i from 0 to n, at time ``t``, evaluated stably.

    ``C(x_0, ..., x_n; t) = int_{tau_0 + ... + tau_n = t, tau_i >= 0} exp(-sum_i x_i tau_i) d tau``, the
    response at ``t`` of a chain of first-order decays with rates ``x_i`` to a unit impulse at 0. It is
    ``(-1)^n`` times the n-th divided difference of ``x -> exp(-x t)`` at the ``x_i``, symmetric in them, with
    ``C(x) = exp(-x t)`` and ``C(a, b) = (exp(-a t) - exp(-b t)) / (b - a)`` (:func:`exp_diff_ratio`).

    Evaluation: the rates are sorted, ``x_0 <= ... <= x_n``. Where their spread is wide,
    ``(x_n - x_0) t >= 1/2``, the divided-difference recursion
    ``C(x_0..x_n) = (C(x_0..x_{n-1}) - C(x_1..x_n)) / (x_n - x_0)`` loses at most a factor 2 to cancellation
    per level. Where it is narrow, the Taylor series of the divided difference around the mean ``m``,
    ``C = t^n exp(-m t) sum_k (-1)^k h_k(y) / (n + k)!`` with ``y_i = (x_i - m) t`` and ``h_k`` the complete
    homogeneous symmetric polynomials (Newton's identities from the power sums), whose k-th term is at most
    ``(1/2)^k / k!`` of the first, is summed to 15 terms in float64 (9 in float32): exact to rounding, and
    analytic in the rates, so values and gradients stay exact at equal rates. The series is evaluated only
    where it is used. All exponents are non-positive for non-negative rates: nothing overflows.

    Parameters
    ----------
    rates
        The ``n + 1`` non-negative rates (each broadcast against ``t``; a rate may be exactly 0).
    t
        Non-negative time.

    Returns
    -------
    torch.Tensor
        ``C`` broadcast to the shape of ``t`` and the rates.
    """
    shape = torch.broadcast_shapes(t.shape, *(r.shape for r in rates))
    rshape = torch.broadcast_shapes(*(r.shape for r in rates))  # sort the (per-gene) rates, not per cell
    x = torch.stack([r.expand(rshape) for r in rates], dim=-1).sort(dim=-1).values
    t = t.expand(shape)
    n_terms = 15 if x.dtype == torch.float64 else 9
    masked = not torch.jit.is_tracing()  # a traced graph cannot hold data-dependent shapes
    memo: dict[tuple[int, int], torch.Tensor] = {}

    def conv(i: int, j: int) -> torch.Tensor:  # C(x_i, ..., x_j), j >= i, sorted
        if (i, j) not in memo:
            lo, hi = x[..., i], x[..., j]
            if i == j:
                memo[(i, j)] = torch.exp(-lo * t).expand(shape)
            elif j == i + 1:
                memo[(i, j)] = -exp_diff_ratio(lo, hi, t).expand(shape)
            else:
                small = (hi - lo) * t < 0.5
                den = torch.where(small, torch.ones_like(hi), hi - lo)  # harmless where the series is used
                general = (conv(i, j - 1) - conv(i + 1, j)) / den
                xs = x[..., i:j + 1].expand(shape + (j - i + 1,))
                if masked:
                    out = general.masked_scatter(small, _conv_series(xs[small], t[small], n_terms)) \
                        if bool(small.any()) else general
                else:
                    out = torch.where(small, _conv_series(xs, t, n_terms), general)
                memo[(i, j)] = out
        return memo[(i, j)]

    return conv(0, x.shape[-1] - 1)


def _conv_series(xs: torch.Tensor, t: torch.Tensor, n_terms: int) -> torch.Tensor:
    """Series of :func:`exp_convolution` around the mean rate: ``xs`` ``(..., n + 1)``, ``t`` ``(...)``."""
    n = xs.shape[-1] - 1
    m = xs.mean(-1)
    y = (xs - m.unsqueeze(-1)) * t.unsqueeze(-1)
    power, p = torch.ones_like(y), [None]
    for _ in range(1, n_terms):
        power = power * y
        p.append(power.sum(-1))
    h = [torch.ones_like(m)]
    total = h[0] / math.factorial(n)
    for k in range(1, n_terms):  # Newton: k h_k = sum_{i=1..k} p_i h_{k-i}
        h.append(sum(p[i] * h[k - i] for i in range(1, k + 1)) / k)
        total = total + (-1) ** k * h[k] / math.factorial(n + k)
    return t ** n * torch.exp(-m * t) * total


# ---- kinetics objects ----------------------------------------------------------------------------------------


class Kinetics(nn.Module):
    """Transcription kinetics of one gene programme: rates as constrained parameters and their closed forms.

    The four states (:data:`STATE_NAMES`) and the time heads' mapping to times (eq. 16-19,
    :func:`state_times`) are common to all kinetics; a kinetics decides the per-gene rates and how u and s
    evolve. The base class implements the splicing ODE ``du/dt = a(t) - beta u``, ``ds/dt = beta u - gamma s``
    with transcription ``a(t)`` during induction and 0 in repression: a subclass sets :attr:`name` and
    :attr:`rate_names`, and writes :meth:`initial_rates`, :meth:`transcription` (``a(t)``),
    :meth:`induction` (its closed-form solution from ``u = s = 0``) and :meth:`steady_state`; everything else
    (switch point, repression, state means, velocities, trajectory) follows. Override more for other ODEs.

    Every closed form takes ``r``, the dict of :meth:`rates` (per-gene ``(G,)`` tensors, broadcasting against
    the times), so it also works on given rates (the simulator's truth, a fitted AnnData's ``var``).

    Parameters
    ----------
    n_genes
        G.
    u_star
        Per-gene unspliced at the switch (:func:`velopyro.model.switch_targets`), ``(G,)``: the data's scale
        for the transcription rates' initial values (default: ones).
    t_max
        The time scale (20).
    beta_init, gamma_init
        Initial splicing and degradation rates (``gamma_init`` may be per gene).
    t_s_init
        Initial switch time (jittered per gene by ``N(0, 0.5^2)`` drawn from ``seed``).
    seed
        Seed of the jitter.
    """

    #: Registered name (``VeloPyro(kinetics=name)``); set by each subclass.
    name: ClassVar[str] = ""
    #: Names of the per-gene rates besides the switch time ``t_s``, in the order of :meth:`rates`.
    rate_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        n_genes: int = 1,
        u_star: np.ndarray | None = None,
        *,
        t_max: float = 20.0,
        beta_init: float = BETA_INIT,
        gamma_init: float | np.ndarray = 0.31,
        t_s_init: float = 7.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not self.name or not self.rate_names:
            raise TypeError(f"{type(self).__name__} must set the class attributes name and rate_names.")
        self.n_genes, self.t_max = int(n_genes), float(t_max)
        u_star = np.ones(n_genes, dtype=np.float32) if u_star is None else np.asarray(u_star, dtype=np.float32)
        gen = torch.Generator().manual_seed(seed)
        t_s0 = (t_s_init + 0.5 * torch.randn(n_genes, generator=gen)).clamp(0.5, self.t_max - 0.5)
        init = self.initial_rates(u_star, beta_init, gamma_init)
        missing = set(self.rate_names) - set(init)
        if missing:
            raise TypeError(f"{type(self).__name__}.initial_rates() lacks {sorted(missing)}.")
        rate = transform_to(constraints.interval(0.0, RATE_MAX))
        for key in self.rate_names:
            value = torch.as_tensor(init[key], dtype=torch.float32).expand(self.n_genes).clone()
            self.register_parameter(f"raw_{key}", nn.Parameter(rate.inv(value)))
        self.raw_t_s = nn.Parameter(transform_to(constraints.interval(0.0, self.t_max)).inv(t_s0))

    # ---- what a subclass writes ---------------------------------------------------------------------------
    def initial_rates(self, u_star: np.ndarray, beta_init: float,
                      gamma_init: float | np.ndarray) -> dict[str, torch.Tensor]:
        """Initial values of the rates in :attr:`rate_names`, each ``(G,)`` (or broadcastable to it).

        Parameters
        ----------
        u_star
            Unspliced at the switch per gene, ``(G,)`` float32.
        beta_init, gamma_init
            As the constructor's.

        Returns
        -------
        dict of str to torch.Tensor
            Values inside ``(0, RATE_MAX)``.
        """
        raise NotImplementedError

    def transcription(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> torch.Tensor:
        """Transcription rate ``a(t)`` at time ``t`` since the start of induction.

        Parameters
        ----------
        t
            Time ``>= 0``, ``(..., G)``.
        r
            Rates (:meth:`rates`).

        Returns
        -------
        torch.Tensor
            Broadcast to the shape of ``t``.
        """
        raise NotImplementedError

    def induction(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unspliced and spliced means ``t`` after the start of induction, from ``u = s = 0``.

        Parameters
        ----------
        t
            Time ``>= 0``, ``(..., G)``.
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u, s)``.
        """
        raise NotImplementedError

    def steady_state(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of the induction steady state (seed state 2; eq. 5-6 for constant kinetics), ``(G,)`` each.

        Parameters
        ----------
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u, s)``.
        """
        raise NotImplementedError

    # ---- shared by the kinetics of the splicing ODE -------------------------------------------------------
    def rates(self) -> dict[str, torch.Tensor]:
        """The constrained per-gene parameters: each of :attr:`rate_names` in ``(0, RATE_MAX)`` and ``t_s`` in
        ``(0, t_max)``.

        Returns
        -------
        dict of str to torch.Tensor
            Each ``(G,)``, in the order of :attr:`rate_names`, then ``t_s``.
        """
        rate = transform_to(constraints.interval(0.0, RATE_MAX))
        switch = transform_to(constraints.interval(0.0, self.t_max))
        out = {key: rate(getattr(self, f"raw_{key}")) for key in self.rate_names}
        out["t_s"] = switch(self.raw_t_s)
        return out

    def repression_steady_state(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of the repression steady state (seed state 4, eq. 11-12: zero).

        Parameters
        ----------
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u, s)``, ``(G,)`` each.
        """
        zero = torch.zeros_like(r["t_s"])
        return zero, zero

    def switch_point(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial condition of repression: the induction solution at the switch time (eq. 9-10).

        Parameters
        ----------
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u0, s0)``, ``(G,)`` each; used by repression and the switch penalty (eq. 27).
        """
        return self.induction(r["t_s"], r)

    def repression(self, tau: torch.Tensor, u0: torch.Tensor, s0: torch.Tensor,
                   r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means ``tau`` after the switch with no transcription (eq. 7-8), from ``(u0, s0)``.

        Parameters
        ----------
        tau
            Time since the switch, ``>= 0``.
        u0, s0
            The switch point (:meth:`switch_point`).
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u, s)``.
        """
        return repression(tau, u0, s0, r["beta"], r["gamma"])

    def state_means(self, t_ind: torch.Tensor, t_rep: torch.Tensor,
                    r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of u and s in the four states, stacked on a trailing state axis (eq. 1-12).

        Parameters
        ----------
        t_ind, t_rep
            Induction and repression times ``(..., G)`` (:func:`state_times`).
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u_bar, s_bar)``, each ``(..., G, 4)`` in the order of :data:`STATE_NAMES`.
        """
        u_ind, s_ind = self.induction(t_ind, r)
        u_iss, s_iss = self.steady_state(r)
        u0, s0 = self.switch_point(r)
        u_rep, s_rep = self.repression(t_rep - r["t_s"], u0, s0, r)
        u_rss, s_rss = self.repression_steady_state(r)
        u_bar = torch.stack([u_ind, u_iss.expand_as(u_ind), u_rep, u_rss.expand_as(u_ind)], dim=-1)
        s_bar = torch.stack([s_ind, s_iss.expand_as(s_ind), s_rep, s_rss.expand_as(s_ind)], dim=-1)
        return u_bar, s_bar

    def state_velocities(self, u_bar: torch.Tensor, s_bar: torch.Tensor, t_ind: torch.Tensor,
                         r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``du/dt = a_k - beta u`` and ``ds/dt = beta u - gamma s`` per state; zero in the steady states.

        ``a_k`` is :meth:`transcription` at ``t_ind`` in induction and 0 in repression.

        Parameters
        ----------
        u_bar, s_bar
            State means (:meth:`state_means`), ``(..., G, 4)``.
        t_ind
            Induction time ``(..., G)``.
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(du_dt, ds_dt)``, each ``(..., G, 4)``.
        """
        b, g = r["beta"].unsqueeze(-1), r["gamma"].unsqueeze(-1)
        a_ind = self.transcription(t_ind, r).expand(u_bar.shape[:-1])
        zero = torch.zeros_like(a_ind)
        alpha_k = torch.stack([a_ind, zero, zero, zero], dim=-1)
        transient = u_bar.new_tensor([1.0, 0.0, 1.0, 0.0])
        du = (alpha_k - b * u_bar) * transient
        ds = (b * u_bar - g * s_bar) * transient
        return du, ds

    def trajectory(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means along absolute time ``t``: induction before ``t_s``, repression after.

        Parameters
        ----------
        t
            Absolute time, ``(..., G)`` or broadcastable to it.
        r
            Rates (:meth:`rates`).

        Returns
        -------
        tuple of torch.Tensor
            ``(u, s)``.
        """
        t_s = r["t_s"]
        u_i, s_i = self.induction(torch.minimum(t, t_s), r)
        u0, s0 = self.switch_point(r)
        u_r, s_r = self.repression(torch.clamp(t - t_s, min=0.0), u0, s0, r)
        before = t < t_s
        return torch.where(before, u_i, u_r), torch.where(before, s_i, s_r)

    def sample_rates(self, rng: np.random.Generator, n_genes: int, t_max: float) -> dict[str, np.ndarray]:
        """Per-gene true rates for the simulator (:func:`velopyro.datasets.simulate`).

        The base draws splicing and degradation rates on the scale of the time window, ``alpha`` near
        ``beta`` (so the induction steady state of u is near 1) and the switch inside the window; a subclass
        adds its own rates.

        Parameters
        ----------
        rng
            The simulator's generator.
        n_genes
            G.
        t_max
            The time scale.

        Returns
        -------
        dict of str to numpy.ndarray
            Each of :attr:`rate_names` and ``t_s``, ``(G,)``.
        """
        beta = np.exp(rng.uniform(np.log(0.1), np.log(0.8), n_genes))
        gamma = beta * np.exp(rng.uniform(np.log(0.4), np.log(2.5), n_genes))
        alpha = beta * rng.uniform(0.8, 1.2, n_genes)  # induction steady state u = alpha / beta near 1
        t_s = rng.uniform(0.3, 0.7, n_genes) * t_max
        return {"alpha": alpha, "beta": beta, "gamma": gamma, "t_s": t_s}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_genes={self.n_genes}, rates={self.rate_names + ('t_s',)}"


class ConstantKinetics(Kinetics):
    """veloVI's kinetics (eq. 1-12): constant transcription ``alpha`` in induction, zero in repression.

    Rates ``alpha``, ``beta``, ``gamma`` and the switch time ``t_s``; alpha starts at the data's u* (the
    reference's initialisation). The closed forms are this module's pure functions.
    """

    name = "constant"
    rate_names = ("alpha", "beta", "gamma")

    def initial_rates(self, u_star: np.ndarray, beta_init: float,
                      gamma_init: float | np.ndarray) -> dict[str, torch.Tensor]:
        n = self.n_genes
        gamma0 = np.clip(np.broadcast_to(np.asarray(gamma_init, dtype=np.float32), (n,)), 1e-3, RATE_MAX - 1e-3)
        return {"alpha": torch.as_tensor(np.clip(u_star, 1e-3, RATE_MAX - 1e-3), dtype=torch.float32),
                "beta": torch.full((n,), beta_init), "gamma": torch.as_tensor(gamma0.copy())}

    def transcription(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> torch.Tensor:
        return r["alpha"].expand_as(t)

    def induction(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return induction(t, r["alpha"], r["beta"], r["gamma"])  # eq. 3-4

    def steady_state(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return r["alpha"] / r["beta"], r["alpha"] / r["gamma"]  # eq. 5-6


class TimeDependentKinetics(Kinetics):
    r"""Transcription that relaxes from ``alpha`` to ``alpha_1`` at rate ``lambda_alpha`` during induction.

    velovi's ``time_dep_transcription_rate=True`` (``velovi._module.VELOVAE``):
    ``a(t) = alpha_1 - (alpha_1 - alpha) exp(-lambda_alpha t)``, ``t`` the time since the start of induction;
    the induction steady state is ``(alpha_1 / beta, alpha_1 / gamma)``, repression is unchanged (a = 0).
    Rates ``alpha`` (the rate at the start of induction), ``alpha_1`` (its limit), ``lambda_alpha``, ``beta``,
    ``gamma``, ``t_s``. Initial values: ``alpha = alpha_1 = u*`` (the constant kinetics' start, which this
    kinetics then contains exactly) and ``lambda_alpha = log 2`` (velovi's softplus(0)).

    Closed form (derived here; velovi writes the same solution with partial fractions and an ``eps`` added to
    each difference of rates). Write :math:`a = \alpha`, :math:`a_1 = \alpha_1`, :math:`\lambda =
    \lambda_\alpha` and :math:`C(x_0, \dots, x_n; t)` for the convolution of the exponentials
    :math:`e^{-x_i t}` (:func:`exp_convolution`; :math:`C(x; t) = e^{-x t}`). The ODE
    :math:`\dot u = a(t) - \beta u`, :math:`\dot s = \beta u - \gamma s` from :math:`u = s = 0` is linear, so
    :math:`u = a * e^{-\beta t}` and :math:`s = \beta\, u * e^{-\gamma t}` (:math:`*`: convolution on
    :math:`[0, t]`). Splitting the input into its two non-negative parts,

    .. math::

        a(t) = a\, e^{-\lambda t} + a_1 (1 - e^{-\lambda t}), \qquad
        1 - e^{-\lambda t} = \lambda \int_0^t e^{-\lambda \tau} d\tau = \lambda\, C(0, \lambda; t),

    gives, since convolutions of exponentials compose, :math:`C(x..) * e^{-y t} = C(x.., y)`,

    .. math::

        u(t) &= a\, C(\lambda, \beta; t) + a_1 \lambda\, C(0, \lambda, \beta; t), \\
        s(t) &= \beta \left[ a\, C(\lambda, \beta, \gamma; t) + a_1 \lambda\, C(0, \lambda, \beta, \gamma; t)
        \right].

    Every term is non-negative, so nothing cancels (the usual form
    :math:`a_1 (1 - e^{-\beta t}) / \beta - (a_1 - a)(e^{-\lambda t} - e^{-\beta t}) / (\beta - \lambda)`
    loses ``a_1 / a`` digits at small ``t`` and is 0/0 at :math:`\beta = \lambda`); :func:`exp_convolution`
    is exact at and near equal rates (:math:`\gamma = \beta`, :math:`\lambda = \beta`, ...), in value and
    gradient. Checks: with :math:`a_1 = a` the identity :math:`C(\lambda, \beta) + \lambda C(0, \lambda,
    \beta) = C(0, \beta)` returns the constant solution (eq. 3-4); as :math:`t \to \infty`,
    :math:`u \to a_1 / \beta` and :math:`s \to a_1 / \gamma`. ``tests/test_kinetics.py`` compares with the
    50-digit matrix exponential of the augmented linear system :math:`(u, s, 1, e^{-\lambda t})`.
    """

    name = "time_dependent"
    rate_names = ("alpha", "alpha_1", "lambda_alpha", "beta", "gamma")

    def initial_rates(self, u_star: np.ndarray, beta_init: float,
                      gamma_init: float | np.ndarray) -> dict[str, torch.Tensor]:
        out = ConstantKinetics.initial_rates(self, u_star, beta_init, gamma_init)
        out["alpha_1"] = out["alpha"].clone()
        out["lambda_alpha"] = torch.full((self.n_genes,), math.log(2.0))
        return out

    def transcription(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> torch.Tensor:
        decay = torch.exp(-r["lambda_alpha"] * t)
        return r["alpha"] * decay - r["alpha_1"] * torch.expm1(-r["lambda_alpha"] * t)

    def induction(self, t: torch.Tensor, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        a, a1, lam, b, g = r["alpha"], r["alpha_1"], r["lambda_alpha"], r["beta"], r["gamma"]
        zero = torch.zeros_like(lam)
        u = a * exp_convolution([lam, b], t) + a1 * lam * exp_convolution([zero, lam, b], t)
        s = b * (a * exp_convolution([lam, b, g], t) + a1 * lam * exp_convolution([zero, lam, b, g], t))
        return u, s

    def steady_state(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return r["alpha_1"] / r["beta"], r["alpha_1"] / r["gamma"]

    def sample_rates(self, rng: np.random.Generator, n_genes: int, t_max: float) -> dict[str, np.ndarray]:
        """The base draws, ``alpha`` read as the limit ``alpha_1``; transcription starts at 5-30% of it and
        relaxes with a time constant ``1 / lambda_alpha`` of 1.5-6 time units (of a switch at 6-14)."""
        base = super().sample_rates(rng, n_genes, t_max)
        alpha_1 = base.pop("alpha")
        alpha = alpha_1 * rng.uniform(0.05, 0.3, n_genes)
        lam = 1.0 / rng.uniform(1.5, 6.0, n_genes)
        return {"alpha": alpha, "alpha_1": alpha_1, "lambda_alpha": lam, "beta": base["beta"],
                "gamma": base["gamma"], "t_s": base["t_s"]}


#: The registered kinetics by name.
KINETICS: dict[str, type[Kinetics]] = {}


def register_kinetics(cls: type[Kinetics]) -> type[Kinetics]:
    """Register a :class:`Kinetics` subclass under its ``name`` (usable as a decorator).

    Parameters
    ----------
    cls
        The class; its ``name`` and ``rate_names`` must be set.

    Returns
    -------
    type
        ``cls`` unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, Kinetics)) or not cls.name or not cls.rate_names:
        raise TypeError(f"register_kinetics takes a Kinetics subclass with name and rate_names set, got {cls!r}.")
    KINETICS[cls.name] = cls
    return cls


register_kinetics(ConstantKinetics)
register_kinetics(TimeDependentKinetics)


def get_kinetics(kinetics: str | type[Kinetics]) -> type[Kinetics]:
    """The kinetics class of a registered name (or a registered class itself).

    Parameters
    ----------
    kinetics
        A name in :data:`KINETICS` or a registered :class:`Kinetics` subclass.

    Returns
    -------
    type
        The class (instantiate it with ``(n_genes, u_star, t_max=...)``).
    """
    if isinstance(kinetics, type) and issubclass(kinetics, Kinetics):
        if KINETICS.get(kinetics.name) is not kinetics:
            raise ValueError(f"kinetics class {kinetics.__name__} is not registered; decorate it with "
                             "@velopyro.register_kinetics (so that a saved model can find it by name).")
        return kinetics
    if not isinstance(kinetics, str) or kinetics not in KINETICS:
        raise ValueError(f"kinetics must be one of {sorted(KINETICS)} (or a registered Kinetics subclass), "
                         f"got {kinetics!r}.")
    return KINETICS[kinetics]
