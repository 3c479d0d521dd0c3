"""Closed-form transcription kinetics of veloVI (seed eq. 1-12) and their time derivatives.

This module is the only place the kinetic maths lives: the model's likelihood, velocity, latent time,
expression fit, the simulator and the plots all call these functions.

All functions are pure torch, broadcast over any leading shape (cells x genes x ...), and work in
float32 or float64. The one delicate term, ``(exp(-gamma tau) - exp(-beta tau)) / (gamma - beta)``,
is evaluated in a form that is exact at ``gamma == beta`` (the analytic limit ``-tau exp(-beta tau)``),
free of cancellation near it, and free of overflow for large rates and times (see :func:`exp_diff_ratio`).

States are indexed 0..3 in code and 1..4 in the seed:

==========  ===================================  =========================
code index  seed state k                         mean
==========  ===================================  =========================
0           1  induction                         eq. 3-4 at t in (0, t_s)
1           2  induction steady state            eq. 5-6
2           3  repression                        eq. 7-8 at t in (t_s, t_max)
3           4  repression steady state           eq. 11-12 (zero)
==========  ===================================  =========================
"""

from __future__ import annotations

import torch

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
]

N_STATES = 4
STATE_NAMES = ("induction", "induction_steady_state", "repression", "repression_steady_state")

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
        The fixed time scale (20 in the seed).

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
