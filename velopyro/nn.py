"""Neural networks of the model and the guide.

- :class:`Encoder`: q(z | u, s) (eq. 22), a Normal over the d-dimensional latent.
- :class:`TimeHeads`: h_ind(z) and h_rep(z) in (0, 1)^G (eq. 16, 18), part of the generative model.
- :class:`DirichletHead` / :class:`LogisticNormalHead`: q(pi | z) (eq. 22).
- :class:`StateHead`: z -> state probabilities per gene, the read-out of pi for a model whose pi is
  integrated out (``pi_guide="collapsed"``), fitted after SVI to the exact E[pi | u, s, z].

Defaults match the reference's capacity: one hidden layer of 256 units,
Linear -> BatchNorm -> LayerNorm -> ReLU -> Dropout. All networks take 2-D inputs (cells x features),
so BatchNorm never sees an enumeration dimension.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .distributions import LogisticNormal, SafeDirichlet

__all__ = ["FCLayers", "Encoder", "TimeHeads", "DirichletHead", "LogisticNormalHead", "StateHead"]

class FCLayers(nn.Module):
    """A stack of fully connected blocks: Linear -> [BatchNorm] -> [LayerNorm] -> ReLU -> [Dropout].

    Parameters
    ----------
    n_in
        Input features.
    n_hidden
        Units per hidden layer.
    n_layers
        Number of blocks (>= 1).
    dropout_rate
        Dropout after each block (0 disables it).
    use_batch_norm, use_layer_norm
        Which normalisations to apply.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int = 256,
        n_layers: int = 1,
        dropout_rate: float = 0.0,
        use_batch_norm: bool = True,
        use_layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        blocks: list[nn.Module] = []
        for i in range(n_layers):
            blocks.append(nn.Linear(n_in if i == 0 else n_hidden, n_hidden))
            if use_batch_norm:
                blocks.append(nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3))
            if use_layer_norm:
                blocks.append(nn.LayerNorm(n_hidden, elementwise_affine=False))
            blocks.append(nn.ReLU())
            if dropout_rate > 0:
                blocks.append(nn.Dropout(dropout_rate))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks to a 2-D input ``(cells, n_in)``.

        Parameters
        ----------
        x
            Input features.

        Returns
        -------
        torch.Tensor
            ``(cells, n_hidden)``.
        """
        return self.layers(x)


class Encoder(nn.Module):
    """q(z | u, s): Normal(loc(x), scale(x)) with ``x = concat(u, s)`` (eq. 22), or
    ``x = concat(u, s, onehot(b))`` with batch covariates (:mod:`velopyro.covariates`).

    Parameters
    ----------
    n_genes
        G; the input has 2G features (plus ``n_covariates``).
    n_latent
        d (10 in veloVI).
    n_hidden, n_layers, dropout_rate
        Trunk shape (see :class:`FCLayers`).
    n_covariates
        Width of the one-hot covariate codes appended to the input (0: none).
    """

    def __init__(self, n_genes: int, n_latent: int = 10, n_hidden: int = 256, n_layers: int = 1,
                 dropout_rate: float = 0.1, n_covariates: int = 0) -> None:
        super().__init__()
        self.trunk = FCLayers(2 * n_genes + n_covariates, n_hidden, n_layers, dropout_rate)
        self.loc = nn.Linear(n_hidden, n_latent)
        self.scale = nn.Linear(n_hidden, n_latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of q(z | u, s), each ``(cells, d)``.

        Parameters
        ----------
        x
            ``concat(u, s)``, ``(cells, 2G)`` (with covariates ``(cells, 2G + n_covariates)``).

        Returns
        -------
        tuple of torch.Tensor
            Location and positive scale.
        """
        h = self.trunk(x)
        return self.loc(h), F.softplus(self.scale(h)) + 1e-4


class TimeHeads(nn.Module):
    """h_ind and h_rep: z -> (0, 1)^G for the induction and repression times (eq. 16, 18).

    Parameters
    ----------
    n_latent, n_genes
        d and G.
    n_hidden, n_layers
        Trunk shape; no dropout in the generative model.
    """

    def __init__(self, n_latent: int, n_genes: int, n_hidden: int = 256, n_layers: int = 1) -> None:
        super().__init__()
        self.trunk = FCLayers(n_latent, n_hidden, n_layers, dropout_rate=0.0)
        self.ind = nn.Linear(n_hidden, n_genes)
        self.rep = nn.Linear(n_hidden, n_genes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(rho_ind, rho_rep)``, each ``(cells, G)`` in (0, 1).

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.

        Returns
        -------
        tuple of torch.Tensor
            The relative positions within induction and repression.
        """
        h = self.trunk(z)
        return torch.sigmoid(self.ind(h)), torch.sigmoid(self.rep(h))


class DirichletHead(nn.Module):
    """q(pi | z) = Dirichlet(softplus(f(z))) per cell and gene (eq. 22).

    Parameters
    ----------
    n_latent, n_genes
        d and G.
    n_hidden, n_layers
        Trunk shape.
    n_states
        4.
    """

    def __init__(self, n_latent: int, n_genes: int, n_hidden: int = 256, n_layers: int = 1,
                 n_states: int = 4) -> None:
        super().__init__()
        self.n_genes, self.n_states = n_genes, n_states
        self.trunk = FCLayers(n_latent, n_hidden, n_layers, dropout_rate=0.0)
        self.out = nn.Linear(n_hidden, n_genes * n_states)
        # torch's implicit reparameterisation gradient of the Dirichlet returns NaN for concentrations
        # near 0; a floor well below the prior's 0.25 keeps it finite
        self.min_concentration = 1e-2

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        """Return the Dirichlet with batch shape ``(cells, G)`` and event shape ``(4,)``.

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.

        Returns
        -------
        pyro.distributions.Dirichlet
            q(pi | z).
        """
        conc = F.softplus(self.out(self.trunk(z))) + self.min_concentration
        return SafeDirichlet(conc.view(z.shape[0], self.n_genes, self.n_states))


class LogisticNormalHead(nn.Module):
    """q(pi | z) = LogisticNormal(loc(z), scale(z)) per cell and gene: a cheaper reparameterised
    distribution on the simplex (a Gaussian in 3 dimensions mapped by the softmax, see
    :class:`velopyro.distributions.LogisticNormal`).

    Parameters
    ----------
    n_latent, n_genes
        d and G.
    n_hidden, n_layers
        Trunk shape.
    n_states
        4.
    """

    def __init__(self, n_latent: int, n_genes: int, n_hidden: int = 256, n_layers: int = 1,
                 n_states: int = 4) -> None:
        super().__init__()
        self.n_genes, self.n_states = n_genes, n_states
        self.trunk = FCLayers(n_latent, n_hidden, n_layers, dropout_rate=0.0)
        self.out = nn.Linear(n_hidden, n_genes * n_states)  # K - 1 locations and one scale per gene

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        """Return the logistic-normal with batch shape ``(cells, G)`` and event shape ``(4,)``.

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.

        Returns
        -------
        velopyro.distributions.LogisticNormal
            q(pi | z).
        """
        out = self.out(self.trunk(z)).view(z.shape[0], self.n_genes, self.n_states)
        # a bounded Gaussian (|loc| <= 8, scale <= 3) keeps every pi_k far above float32's smallest normal,
        # so pi never underflows to 0, where the Dirichlet prior's density (eq. 14) is infinite
        loc = 8.0 * torch.tanh(out[..., :-1] / 8.0)
        scale = F.softplus(out[..., -1:]).clamp(max=3.0) + 1e-3
        return LogisticNormal(loc, scale)


class StateHead(nn.Module):
    """z -> state probabilities ``(cells, G, 4)``: an amortised read-out of pi as a function of z alone.

    With pi integrated out of the model (``pi_guide="collapsed"``, :mod:`velopyro.collapsed`) the exact
    posterior mean E[pi | u, s, z] follows each cell's own observations. This head is the amortised
    counterpart of q(pi | z) (eq. 22): fitted after SVI by cross-entropy to that exact mean
    (:func:`velopyro.train.fit_state_head`), its minimiser is E[E[pi | u, s, z] | z], a smooth function of
    the latent, which the velocity read-out weights the states by. It is not part of the ELBO.

    Parameters
    ----------
    n_latent, n_genes
        d and G.
    n_hidden, n_layers
        Trunk shape.
    n_states
        4.
    """

    def __init__(self, n_latent: int, n_genes: int, n_hidden: int = 256, n_layers: int = 1,
                 n_states: int = 4) -> None:
        super().__init__()
        self.n_genes, self.n_states = n_genes, n_states
        self.trunk = FCLayers(n_latent, n_hidden, n_layers, dropout_rate=0.0)
        self.out = nn.Linear(n_hidden, n_genes * n_states)
        # set by velopyro.train.fit_state_head; saved with the guide, so a loaded fit reads out the same
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Log state probabilities ``(cells, G, 4)``.

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.

        Returns
        -------
        torch.Tensor
            ``log_softmax`` over the states.
        """
        logits = self.out(self.trunk(z)).view(z.shape[0], self.n_genes, self.n_states)
        # the states in front for the reduction (torch's CPU softmax is slow over a last axis of 4)
        return torch.log_softmax(logits.movedim(-1, 0), dim=0).movedim(0, -1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """State probabilities ``(cells, G, 4)``.

        Parameters
        ----------
        z
            Latent, ``(cells, d)``.

        Returns
        -------
        torch.Tensor
            Probabilities over the four states.
        """
        return self.log_probs(z).exp()
