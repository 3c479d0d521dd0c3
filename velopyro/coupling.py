"""State coupling as a strategy object: how the unspliced and spliced observations share the state k.

veloVI's state k (seed eq. 15) can be

- ``"independent"`` (:class:`Independent`, the default): one state site for u and one for s, each
  ``Categorical(pi)``, the objective the reference optimises (eq. 23-24);
- ``"shared"`` (:class:`Shared`): one state for both, the exact marginal of the generative process (eq. 15).

The model draws the state sites with :meth:`StateCoupling.sample_states`; the posterior, the posterior
predictive checks and the pointwise log-likelihood ask the same object for the mixture likelihood, the
states' conditional posterior and the likelihood with pi integrated over its prior, so a new coupling is
one registered class (:func:`register_state_coupling`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

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
