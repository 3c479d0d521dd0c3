"""State coupling as a strategy object: how the unspliced and spliced observations share the state k.

veloVI's state k (eq. 15) can be

- ``"independent"`` (:class:`Independent`, the default): one state site for u and one for s, each
  ``Categorical(pi)``, the objective the reference optimises (eq. 23-24);
- ``"shared"`` (:class:`Shared`): one state for both, the exact marginal of the generative process (eq. 15).

The model draws the state sites with :meth:`StateCoupling.sample_states`; the posterior, the posterior
predictive checks and the pointwise log-likelihood ask the same object for the mixture likelihood, the
states' conditional posterior and the likelihood with pi integrated over its prior, so a new coupling is
one registered class (:func:`register_state_coupling`).

With ``pi_guide="collapsed"`` pi is integrated out of the model (the algebra is in
:mod:`velopyro.collapsed`); each coupling then also draws its state sites from the prior predictive
(:meth:`StateCoupling.sample_collapsed_states`), gives the read-outs of a draw
(:meth:`StateCoupling.collapsed_readouts`: ``E[pi | u, s, z]`` and the state prior of the state
posterior) and draws states given the data (:meth:`StateCoupling.collapsed_posterior_states`,
:meth:`StateCoupling.collapsed_new_states`). Nothing outside this module asks which coupling it is.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from . import collapsed

__all__ = ["StateCoupling", "Independent", "Shared", "STATE_COUPLINGS", "register_state_coupling",
           "get_state_coupling"]


class StateCoupling:
    """How u and s share the state k. Subclasses set :attr:`name` and :attr:`sites` and the methods.

    All log-probabilities are ``(..., 4)`` over the states: ``log_pi`` the state probabilities, ``ll_u``
    and ``ll_s`` the per-state log-likelihoods of the observations.
    """

    #: Registered name (``VeloPyro(state_coupling=name)``).
    name: str = ""
    #: Names of the model's state sites.
    sites: tuple[str, ...] = ()

    def sample_states(self, pi: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the state sites inside the model's cell and gene plates.

        Parameters
        ----------
        pi
            State probabilities ``(B, G, 4)``.
        infer
            The sites' ``infer`` dict (parallel enumeration in training).

        Returns
        -------
        tuple of torch.Tensor
            The states of u and of s (the same tensor when shared).
        """
        raise NotImplementedError

    def mixture_log_likelihood(self, log_pi: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of ``(u, s)`` with the state summed out (eq. 15 or 23-24).

        Parameters
        ----------
        log_pi, ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        torch.Tensor
            ``(...)``.
        """
        raise NotImplementedError

    def posterior_states(self, log_pi: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draws of the state sites from their posterior given the data, z and pi.

        Parameters
        ----------
        log_pi, ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``{site: states}`` for each of :attr:`sites`, each ``(...)`` in 0..3.
        """
        raise NotImplementedError

    def prior_log_likelihood(self, log_a: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> torch.Tensor:
        """``log p(u, s | z)`` with pi integrated over its Dirichlet prior of concentrations ``a`` (eq. 14).

        Parameters
        ----------
        log_a
            Log prior concentrations ``(4,)``.
        ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        torch.Tensor
            ``(...)``.
        """
        raise NotImplementedError

    # ---- pi integrated out (pi_guide="collapsed"; velopyro.collapsed) ------------------------------
    def sample_collapsed_states(self, alpha: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the state sites with pi integrated over its ``Dirichlet(alpha)`` prior (eq. 14-15, 23-24).

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.
        infer
            The sites' ``infer`` dict (parallel enumeration in training).

        Returns
        -------
        tuple of torch.Tensor
            The states of u and of s (the same tensor when shared).
        """
        raise NotImplementedError

    def collapsed_state_log_prior(self, alpha: torch.Tensor) -> torch.Tensor:
        """Log prior weight of "u and s are both in state k", the weights of the state posterior read-out.

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.

        Returns
        -------
        torch.Tensor
            ``(4,)`` (unnormalised where the coupling's pair prior is).
        """
        raise NotImplementedError

    def collapsed_pi_mean(self, alpha: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> torch.Tensor:
        """``E[pi | u, s, z]``, the exact posterior mean of pi given the data and the kinetics of z.

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.
        ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        torch.Tensor
            ``(..., 4)`` on the simplex.
        """
        raise NotImplementedError

    def collapsed_posterior_states(self, alpha: torch.Tensor, ll_u: torch.Tensor,
                                   ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draws of the state sites from their exact posterior given the data and z, pi integrated out.

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.
        ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``{site: states}`` for each of :attr:`sites`.
        """
        raise NotImplementedError

    def collapsed_new_states(self, alpha: torch.Tensor, pi_mean: torch.Tensor, ll_u: torch.Tensor,
                             ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """New states given the data, pi integrated out (the posterior predictive of a new state).

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.
        pi_mean
            ``E[pi | u, s, z]`` (:meth:`collapsed_pi_mean`), ``(..., 4)``.
        ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``{site: states}`` for each of :attr:`sites`.
        """
        raise NotImplementedError

    def collapsed_readouts(self, alpha: torch.Tensor, ll_u: torch.Tensor,
                           ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a posterior draw of a collapsed model carries about pi (:class:`velopyro.posterior.PosteriorSample`).

        Parameters
        ----------
        alpha
            Prior concentrations ``(4,)``.
        ll_u, ll_s
            ``(..., 4)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``pi`` (:meth:`collapsed_pi_mean`), ``pi_prior`` (``alpha``) and ``log_state_prior``
            (:meth:`collapsed_state_log_prior`).
        """
        return {"pi": self.collapsed_pi_mean(alpha, ll_u, ll_s), "pi_prior": alpha,
                "log_state_prior": self.collapsed_state_log_prior(alpha)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Independent(StateCoupling):
    """One state for u and one for s (eq. 23-24): ``log sum_k pi_k p(u | k) + log sum_k pi_k p(s | k)``."""

    name = "independent"
    sites = ("k_u", "k_s")

    def sample_states(self, pi: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        k_u = pyro.sample("k_u", dist.Categorical(pi), infer=infer)  # eq. 23
        k_s = pyro.sample("k_s", dist.Categorical(pi), infer=infer)  # eq. 24
        return k_u, k_s

    def mixture_log_likelihood(self, log_pi: torch.Tensor, ll_u: torch.Tensor,
                               ll_s: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_pi + ll_u, dim=-1) + torch.logsumexp(log_pi + ll_s, dim=-1)

    def posterior_states(self, log_pi: torch.Tensor, ll_u: torch.Tensor,
                         ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"k_u": torch.distributions.Categorical(logits=log_pi + ll_u).sample(),
                "k_s": torch.distributions.Categorical(logits=log_pi + ll_s).sample()}

    def prior_log_likelihood(self, log_a: torch.Tensor, ll_u: torch.Tensor,
                             ll_s: torch.Tensor) -> torch.Tensor:
        # E[pi_j pi_k] = (a_j a_k + [j = k] a_k) / (A (A + 1)) under Dirichlet(a), A = sum a
        total = log_a.exp().sum()
        cross = torch.logsumexp(log_a + ll_u, -1) + torch.logsumexp(log_a + ll_s, -1)
        diag = torch.logsumexp(log_a + ll_u + ll_s, -1)
        return torch.logaddexp(cross, diag) - torch.log(total * (total + 1.0))

    def sample_collapsed_states(self, alpha: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # k_u ~ E[pi] = a / A; k_s | k_u ~ E[pi_ku pi_ks] / E[pi_ku] = (a + e_ku) / (A + 1) (velopyro.collapsed)
        k_u = pyro.sample("k_u", dist.Categorical(alpha / alpha.sum()), infer=infer)
        k_s = pyro.sample("k_s", dist.Categorical(Vindex(collapsed.conditional_prior(alpha))[..., k_u, :]),
                          infer=infer)
        return k_u, k_s

    def collapsed_state_log_prior(self, alpha: torch.Tensor) -> torch.Tensor:
        # the diagonal of the pair prior: p(k_u = k_s = k | u, s, z, k_u = k_s) is the read-out
        return torch.log(torch.diagonal(collapsed.pair_prior(alpha)))

    def collapsed_pi_mean(self, alpha: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> torch.Tensor:
        joint = collapsed.pair_posterior(ll_u, ll_s, alpha)
        return (alpha + joint.sum(-1) + joint.sum(-2)) / (alpha.sum() + 2.0)

    def collapsed_posterior_states(self, alpha: torch.Tensor, ll_u: torch.Tensor,
                                   ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return _pair_draw(collapsed.pair_posterior(ll_u, ll_s, alpha))

    def collapsed_new_states(self, alpha: torch.Tensor, pi_mean: torch.Tensor, ll_u: torch.Tensor,
                             ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return _pair_draw(collapsed.pair_predictive(ll_u, ll_s, alpha))


class Shared(StateCoupling):
    """One state for u and s (eq. 15): ``log sum_k pi_k p(u | k) p(s | k)``."""

    name = "shared"
    sites = ("k",)

    def sample_states(self, pi: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        k = pyro.sample("k", dist.Categorical(pi), infer=infer)  # eq. 15
        return k, k

    def mixture_log_likelihood(self, log_pi: torch.Tensor, ll_u: torch.Tensor,
                               ll_s: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_pi + ll_u + ll_s, dim=-1)

    def posterior_states(self, log_pi: torch.Tensor, ll_u: torch.Tensor,
                         ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"k": torch.distributions.Categorical(logits=log_pi + ll_u + ll_s).sample()}

    def prior_log_likelihood(self, log_a: torch.Tensor, ll_u: torch.Tensor,
                             ll_s: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_a - torch.logsumexp(log_a, -1) + ll_u + ll_s, dim=-1)

    def sample_collapsed_states(self, alpha: torch.Tensor, infer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        k = pyro.sample("k", dist.Categorical(alpha / alpha.sum()), infer=infer)  # E[pi] = a / A
        return k, k

    def collapsed_state_log_prior(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.log(alpha / alpha.sum())

    def collapsed_pi_mean(self, alpha: torch.Tensor, ll_u: torch.Tensor, ll_s: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(torch.log(alpha) + ll_u + ll_s, dim=-1)  # p(k | u, s, z)
        return (alpha + w) / (alpha.sum() + 1.0)

    def collapsed_posterior_states(self, alpha: torch.Tensor, ll_u: torch.Tensor,
                                   ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.posterior_states(self.collapsed_state_log_prior(alpha), ll_u, ll_s)

    def collapsed_new_states(self, alpha: torch.Tensor, pi_mean: torch.Tensor, ll_u: torch.Tensor,
                             ll_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"k": torch.distributions.Categorical(probs=pi_mean).sample()}


def _pair_draw(joint: torch.Tensor) -> dict[str, torch.Tensor]:
    """``k_u``, ``k_s`` drawn from a joint ``(..., 4, 4)`` table (rows ``k_u``)."""
    flat = torch.distributions.Categorical(probs=joint.flatten(-2)).sample()
    n = joint.shape[-1]
    return {"k_u": flat // n, "k_s": flat % n}


#: The registered state couplings by name.
STATE_COUPLINGS: dict[str, StateCoupling] = {}


def register_state_coupling(cls: type[StateCoupling]) -> type[StateCoupling]:
    """Register a :class:`StateCoupling` subclass under its ``name`` (usable as a decorator).

    Parameters
    ----------
    cls
        The class.

    Returns
    -------
    type
        ``cls`` unchanged.
    """
    STATE_COUPLINGS[cls.name] = cls()
    return cls


register_state_coupling(Independent)
register_state_coupling(Shared)


def get_state_coupling(coupling: str | StateCoupling) -> StateCoupling:
    """The state coupling object of a name (or the object itself).

    Parameters
    ----------
    coupling
        A registered name or a :class:`StateCoupling`.

    Returns
    -------
    StateCoupling
        The strategy.
    """
    if isinstance(coupling, StateCoupling):
        return coupling
    if coupling not in STATE_COUPLINGS:
        raise ValueError(f"state_coupling must be one of {tuple(STATE_COUPLINGS)}, got {coupling!r}.")
    return STATE_COUPLINGS[coupling]
