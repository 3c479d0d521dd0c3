"""pi integrated out: the Dirichlet-Categorical algebra of ``pi_guide="collapsed"`` (eq. 14-15, 23-24).

The prior of the state probabilities is ``pi_ng ~ Dirichlet(a)``, ``a = (0.25, 0.25, 0.25, 0.25)`` (eq. 14),
``A = sum_k a_k = 1``, and pi enters the likelihood only through the state(s) it generates (eq. 15). The
Dirichlet is conjugate to the Categorical, so pi can be integrated out of the model exactly
(Rao-Blackwellisation): no pi is sampled, q(pi | z) and the KL term of pi disappear, and what remains is
enumerated exactly as before.

Shared coupling (one state ``k`` for u and s, eq. 15)::

    p(k) = E[pi_k] = a_k / A = 0.25.

Independent coupling (``k_u`` and ``k_s`` both drawn from the *same* pi, eq. 23-24, as the uncollapsed
model velopyro fits): the pair has the joint prior of a Dirichlet-multinomial (a Polya urn)::

    p(k_u = i, k_s = j) = E[pi_i pi_j] = (a_i a_j + [i = j] a_i) / (A (A + 1)),

0.15625 on the diagonal and 0.03125 off it. The model enumerates ``k_u ~ Categorical(a / A)`` (the
marginal, 0.25 each) and then ``k_s | k_u ~ Categorical((a + e_{k_u}) / (A + 1))`` (the rows of the joint
divided by 0.25: 0.625 on the diagonal, 0.125 off it). The pair is not independent: one state seen makes
the same state likelier for the other modality. Note that the uncollapsed objective with a *point* pi,
``log sum_k pi_k p(u | k) + log sum_k pi_k p(s | k)`` (eq. 23-24), factorises in u and s; its expectation
over the Dirichlet prior does not, and the collapsed model is that exact expectation.

The posterior of pi given the data (and z) is a mixture of Dirichlets, ``p(pi | k) = Dirichlet(a + e_k)``
(shared) or ``Dirichlet(a + e_{k_u} + e_{k_s})`` (independent), weighted by the exact state posterior, so::

    shared:       E[pi | u, s, z] = (a + p(k | u, s, z)) / (A + 1)
    independent:  E[pi | u, s, z] = (a + p(k_u | u, s, z) + p(k_s | u, s, z)) / (A + 2)

with ``p(k_u, k_s | u, s, z) ∝ p(k_u, k_s) p(u | k_u) p(s | k_s)``. The velocity read-out with
``state_weights="pi"`` uses this mean. A *new* state pair drawn given the data
(the posterior predictive of ``states="pi"`` in :mod:`velopyro.ppc`) has ``E[pi_i pi_j | u, s, z]``
(:func:`pair_predictive`), the second moment of that mixture of Dirichlets.

This module holds the algebra only; each state coupling (:mod:`velopyro.coupling`) applies it in its
``collapsed_*`` methods and ``prior_log_likelihood`` (the marginal ``log p(u, s | z)``).
"""

from __future__ import annotations

import torch

__all__ = ["pair_prior", "conditional_prior", "pair_posterior", "pair_predictive"]


def pair_prior(alpha: torch.Tensor) -> torch.Tensor:
    """``E[pi_i pi_j]`` under ``Dirichlet(alpha)``: the joint prior of ``(k_u, k_s)``.

    Parameters
    ----------
    alpha
        Concentrations, ``(K,)``.

    Returns
    -------
    torch.Tensor
        ``(K, K)``, rows ``k_u``, columns ``k_s``; sums to 1.
    """
    total = alpha.sum()
    return (torch.outer(alpha, alpha) + torch.diag(alpha)) / (total * (total + 1.0))


def conditional_prior(alpha: torch.Tensor) -> torch.Tensor:
    """``p(k_s | k_u) = (alpha + e_{k_u}) / (A + 1)``, the rows of :func:`pair_prior` over their sums.

    Parameters
    ----------
    alpha
        Concentrations, ``(K,)``.

    Returns
    -------
    torch.Tensor
        ``(K, K)``, row ``k_u`` is the distribution of ``k_s``.
    """
    return (alpha + torch.eye(alpha.shape[0], dtype=alpha.dtype, device=alpha.device)) / (alpha.sum() + 1.0)


def _pair_logits(ll_u: torch.Tensor, ll_s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``log p(k_u, k_s) + log p(u | k_u) + log p(s | k_s)``, ``(..., K, K)``."""
    return torch.log(pair_prior(alpha)) + ll_u.unsqueeze(-1) + ll_s.unsqueeze(-2)


def pair_posterior(ll_u: torch.Tensor, ll_s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Exact ``p(k_u, k_s | u, s, z)`` of the collapsed independent coupling.

    Parameters
    ----------
    ll_u, ll_s
        Per-state log-likelihoods, ``(..., K)``.
    alpha
        Prior concentrations, ``(K,)``.

    Returns
    -------
    torch.Tensor
        ``(..., K, K)``, rows ``k_u``, columns ``k_s``.
    """
    logits = _pair_logits(ll_u, ll_s, alpha)
    return torch.softmax(logits.flatten(-2), dim=-1).view(logits.shape)


def pair_predictive(ll_u: torch.Tensor, ll_s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``E[pi_i pi_j | u, s, z]`` (independent coupling): the distribution of a new pair ``(k_u, k_s)``.

    Given ``(k_u, k_s)``, pi is ``Dirichlet(b)`` with ``b = alpha + c``, ``c = e_{k_u} + e_{k_s}``, ``B = A + 2``,
    and ``E[pi_i pi_j | b] = (b_i b_j + [i = j] b_i) / (B (B + 1))``; averaging over the exact pair posterior
    ``P`` needs ``E[c] = P_u + P_s`` and ``E[c c^T] = diag(P_u) + diag(P_s) + P + P^T``.

    Parameters
    ----------
    ll_u, ll_s
        Per-state log-likelihoods, ``(..., K)``.
    alpha
        Prior concentrations, ``(K,)``.

    Returns
    -------
    torch.Tensor
        ``(..., K, K)``, summing to 1 over the last two axes.
    """
    joint = pair_posterior(ll_u, ll_s, alpha)
    p_u, p_s = joint.sum(-1), joint.sum(-2)
    m = p_u + p_s
    ecc = torch.diag_embed(m) + joint + joint.transpose(-1, -2)
    ebb = torch.outer(alpha, alpha) + alpha.unsqueeze(-1) * m.unsqueeze(-2) + m.unsqueeze(-1) * alpha + ecc
    big = alpha.sum() + 2.0
    return (ebb + torch.diag_embed(alpha + m)) / (big * (big + 1.0))
