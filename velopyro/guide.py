"""The amortised guide q(z, pi | u, s) = prod_n q(z_n | u_n, s_n) prod_g q(pi_ng | z_n) (eq. 22).

The state k is enumerated out in the model and never appears here. Shapes for a minibatch of B cells::

    x = concat(u, s)  (B, 2G)   encoder input (after the likelihood's encoder transform; with batch
                                covariates the one-hot codes are appended, :mod:`velopyro.covariates`)
    z                 (B, 1, d) Normal(loc(x), scale(x))
    pi                (B, G, 4) Dirichlet(conc(z)) or LogisticNormal(loc(z), scale(z))

With ``pi_guide="collapsed"`` the model integrates pi out (:mod:`velopyro.collapsed`) and the guide is
q(z | u, s) alone: no pi site, no q(pi | z) network. It carries a :class:`~velopyro.nn.StateHead`
instead, which is not part of the ELBO: fitted after SVI to the exact E[pi | u, s, z]
(:func:`velopyro.train.fit_state_head`), it gives the velocity read-out state weights that are a smooth
function of z, as q(pi | z) does for the other families.

With ``pi_guide="conditional"`` the model has no Dirichlet: pi is a function of z in the model itself,
``p(k | z) = Categorical(pi(z))`` (:class:`velopyro.model.VeloVIModel`, ``pi_of_z=True``), and k is
enumerated exactly as before. The guide is q(z | u, s) alone, with neither a pi site nor a state head.

Guides are registered by name (:data:`GUIDES`, :func:`register_guide`; ``VeloPyro(pi_guide=name)``). A
new guide is any ``torch.nn.Module`` with the model's call signature that samples ``"z"`` (shape
``(B, 1, d)`` inside the cells plate) and, unless the model integrates pi out, ``"pi"`` ``(B, G, 4)``
inside the genes plate, from any families: the posterior read-outs trace it and replay the model
against it (:func:`velopyro.posterior.draw`), so nothing downstream needs an edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .covariates import check_batch_index, one_hot
from .likelihoods import Likelihood
from .nn import DirichletHead, Encoder, LogisticNormalHead, StateHead

__all__ = ["VeloVIGuide", "PI_GUIDES", "GuideFamily", "GUIDES", "register_guide", "get_guide"]

#: q(pi | z) families by name; ``"collapsed"`` has none (pi is integrated out of the model) and ``"conditional"``
#: none (pi is a function of z in the model).
PI_GUIDES = {"dirichlet": DirichletHead, "logistic_normal": LogisticNormalHead, "collapsed": None,
             "conditional": None}


class VeloVIGuide(nn.Module):
    """Amortised variational family of eq. 22.

    Parameters
    ----------
    n_genes, n_latent
        G and d.
    likelihood
        The model's likelihood; only its :meth:`~velopyro.likelihoods.Likelihood.encoder_input` is used.
    pi_guide
        ``"dirichlet"`` (veloVI's family), ``"logistic_normal"`` (cheaper to sample), ``"collapsed"``
        (no q(pi | z): the model must be built with ``collapse_pi=True``) or ``"conditional"`` (no q(pi | z)
        and no state head: the model must be built with ``pi_of_z=True``).
    n_hidden, n_layers, dropout_rate
        Network shape (reference: 256, 1, 0.1).
    n_categories
        Categories of each batch covariate, whose one-hot codes the encoder also sees (empty: none).
    batch_correction
        ``f(x, modality, batch_index)``: the observations mapped back to the reference batch before the
        encoder (the model's :meth:`velopyro.covariates.BatchEffect.inverse`), or None (the one-hot codes
        alone). A function, not a submodule: its parameters belong to the model.
    """

    def __init__(
        self,
        n_genes: int,
        n_latent: int,
        likelihood: Likelihood,
        pi_guide: str = "dirichlet",
        n_hidden: int = 256,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        n_categories: tuple[int, ...] = (),
        batch_correction: Callable[[torch.Tensor, str, torch.Tensor | None], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if pi_guide not in PI_GUIDES:
            raise ValueError(f"pi_guide must be one of {sorted(PI_GUIDES)}, got {pi_guide!r}.")
        self.n_genes, self.pi_guide = n_genes, pi_guide
        self.n_categories = tuple(int(n) for n in n_categories)
        self.encoder = Encoder(n_genes, n_latent, n_hidden, n_layers, dropout_rate,
                               n_covariates=sum(self.n_categories))
        head = PI_GUIDES[pi_guide]
        self.pi_head = None if head is None else head(n_latent, n_genes, n_hidden, n_layers)
        # pi integrated out: the read-out of pi as a function of z, fitted after SVI (not in the ELBO)
        # (made with the global random state restored afterwards, so that adding it changed no other draw;
        # its weights are drawn again from the fit's seed when it is fitted)
        with torch.random.fork_rng(devices=[]):
            self.state_head = StateHead(n_latent, n_genes, n_hidden, n_layers) if pi_guide == "collapsed" else None
        self._encoder_input = likelihood.encoder_input  # a function, not a submodule
        self._batch_correction = batch_correction
        self._pyro_name: str | None = None

    def encode(
        self,
        u: torch.Tensor,
        s: torch.Tensor,
        size_factor_u: torch.Tensor | None = None,
        size_factor_s: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z | u, s) (q(z | u, s, b) with covariates).

        Parameters
        ----------
        u, s
            Observations ``(B, G)``.
        size_factor_u, size_factor_s
            ``(B, 1)`` size factors or None.
        batch_index
            ``(B, K)`` covariate codes; required when the guide has covariates.

        Returns
        -------
        tuple of torch.Tensor
            Each ``(B, d)``.
        """
        if self.n_categories:
            check_batch_index(batch_index, u.shape[0], len(self.n_categories))
            if self._batch_correction is not None:
                u, s = self._batch_correction(u, "u", batch_index), self._batch_correction(s, "s", batch_index)
        parts = [self._encoder_input(u, size_factor_u), self._encoder_input(s, size_factor_s)]
        if self.n_categories:
            parts.append(one_hot(batch_index, self.n_categories).to(parts[0].dtype))
        return self.encoder(torch.cat(parts, dim=-1))

    def forward(
        self,
        idx: torch.Tensor,
        u: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        size_factor_u: torch.Tensor | None = None,
        size_factor_s: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
        kl_weight: float | torch.Tensor = 1.0,
        penalty_weight: float | torch.Tensor = 1.0,
        n_cells: int | None = None,
    ) -> None:
        """Sample z and pi (unless collapsed) for the cells ``idx``; same signature as the model.

        Parameters
        ----------
        idx, u, s, size_factor_u, size_factor_s, batch_index, kl_weight, penalty_weight, n_cells
            As :meth:`velopyro.model.VeloVIModel.forward`; ``u`` and ``s`` are required here.
        """
        if u is None or s is None:
            raise ValueError("The guide needs the observations u and s (it is amortised on them).")
        if self._pyro_name is not None:
            pyro.module(self._pyro_name, self)
        n_cells = idx.shape[0] if n_cells is None else n_cells
        check_batch_index(batch_index, idx.shape[0], len(self.n_categories))
        with pyro.plate("cells", n_cells, subsample=idx, dim=-2):
            loc, scale = self.encode(u, s, size_factor_u, size_factor_s, batch_index)
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))
            if self.pi_head is not None:
                with pyro.plate("genes", self.n_genes, dim=-1):
                    pyro.sample("pi", self.pi_head(z.squeeze(-2)))


@dataclass(frozen=True)
class GuideFamily:
    """A registered guide: how to build it, and whether the model integrates pi out for it.

    Attributes
    ----------
    name
        The registered name (``VeloPyro(pi_guide=name)``).
    build
        Called with the keywords ``n_genes``, ``n_latent``, ``likelihood``, ``n_hidden``, ``n_layers`` and
        ``dropout_rate``; returns the guide module (see the module docstring for what it must sample).
    collapse_pi
        The model has no pi site (pi integrated out, :mod:`velopyro.collapsed`); the guide samples z only.
    pi_of_z
        The model has no pi site because pi is a function of z in the model (``p(k | z) =
        Categorical(pi(z))``); the guide samples z only.
    """

    name: str
    build: Callable[..., nn.Module]
    collapse_pi: bool = False
    pi_of_z: bool = False


#: The registered guides by name.
GUIDES: dict[str, GuideFamily] = {}


def register_guide(name: str, build: Callable[..., nn.Module], *, collapse_pi: bool = False,
                   pi_of_z: bool = False) -> GuideFamily:
    """Register a guide under ``name`` so that ``VeloPyro(adata, pi_guide=name)`` builds it.

    Parameters
    ----------
    name
        The name.
    build
        Factory of the guide module (see :class:`GuideFamily`), e.g. the guide class itself.
    collapse_pi
        Whether the model integrates pi out for this guide.
    pi_of_z
        Whether the model makes pi a function of z for this guide (no pi site, no Dirichlet).

    Returns
    -------
    GuideFamily
        The registered entry.
    """
    family = GuideFamily(str(name), build, bool(collapse_pi), bool(pi_of_z))
    GUIDES[family.name] = family
    return family


for _name in PI_GUIDES:
    register_guide(_name, partial(VeloVIGuide, pi_guide=_name), collapse_pi=_name == "collapsed",
                   pi_of_z=_name == "conditional")


def get_guide(name: str) -> GuideFamily:
    """The registered guide of a name.

    Parameters
    ----------
    name
        A name of :data:`GUIDES`.

    Returns
    -------
    GuideFamily
        The entry.
    """
    if name not in GUIDES:
        raise ValueError(f"pi_guide must be one of {sorted(GUIDES)}, got {name!r}.")
    return GUIDES[name]
