"""Posterior sampling and posterior predictive checks (PPC), batched over cells with bounded memory.

Every function here takes a fitted :class:`~velopyro.api.VeloPyro` (or its
:class:`~velopyro.fitted.FittedModel`) and walks over the cells in batches
(:func:`velopyro.posterior.iterate_samples`). Within a batch it draws from the variational posterior
``q(z, pi | u, s)`` (eq. 22), maps each draw through the time heads and the kinetics
(eq. 16-19, 1-12) and, for replicated data, runs the **Pyro model itself without observations** with
``z`` and ``pi`` fixed to the draw (:func:`replicate`), so ``u_rep`` and ``s_rep`` come from the model's
likelihood object (eq. 20-21 for the Normal, the count likelihoods otherwise). The replicated data, the
simulator, the model and the pointwise log-likelihood for ArviZ all go through the same
:class:`~velopyro.likelihoods.Likelihood`.

The state ``k`` (eq. 15) is enumerated out in training and never sampled by the guide. Its posterior
*given the data* is, per draw, ``p(k | u, s, z, pi) ∝ pi_k p(u | k) p(s | k)`` (what
``infer_discrete(temperature=1)`` samples): :func:`sample_posterior` returns it as ``"state_probs"``
and draws from it as ``"k"``. Replicates take their state from it by default (``states="posterior"``:
every latent variable from the posterior) or draw a new one from ``Categorical(pi)``
(``states="pi"``, the model run as is). With ``pi_guide="collapsed"`` (pi integrated out,
:mod:`velopyro.collapsed`) the posterior states are drawn from the exact state posterior and
``states="pi"`` draws new states from ``E[pi | u, s, z]`` (a pair from ``E[pi_i pi_j | u, s, z]``).

Memory: only a batch of draws is held at a time (``n_samples x batch x genes`` floats per variable; the
batch is shrunk so that this stays under :data:`MAX_BATCH_FLOATS`). By default only summaries (mean,
standard deviation, quantiles) per cell (and gene) are returned, each ``cells x genes x 4`` bytes (0.8 GB
for 100k cells and 2,000 genes: pass ``genes=`` or fewer ``quantiles`` for less); full draws on request
(``return_draws=True``) and cost ``n_samples x cells x genes x 4`` bytes per variable (for 100k cells,
2,000 genes and 100 draws that is 80 GB: ask for ``genes=``/``indices=`` subsets). The PIT and the
histograms behind the density checks and rootograms are accumulated on the fly: replicates are
compared with the observation or binned, then dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pyro import poutine
from scipy import stats

from . import kinetics, posterior
from ._rng import seeded
from ._validation import check_n_samples
from .coupling import StateCoupling, get_state_coupling
from .fitted import FittedLike, FittedModel, as_fitted

__all__ = [
    "POSTERIOR_VARIABLES",
    "PREDICTIVE_VARIABLES",
    "LOG_LIKELIHOOD",
    "sample_posterior",
    "posterior_predictive",
    "pit",
    "ks_uniform",
    "ks_per_gene",
    "histograms",
    "default_edges",
    "resolve_genes",
    "resolve_indices",
    "iterate_draws",
    "replicate",
    "posterior_states",
    "pointwise_log_likelihood",
]

#: Per-draw posterior quantities and their dimensions after the cell axis.
POSTERIOR_VARIABLES: dict[str, tuple[str, ...]] = {
    "z": ("latent",),  # eq. 13, a draw of q(z | u, s)
    "pi": ("gene", "state"),  # eq. 14, a draw of q(pi | z)
    "time": ("gene",),  # latent time with the default state weights (p(k | data)), as VeloPyro.get_latent_time
    "t_ind": ("gene",),  # eq. 17
    "t_rep": ("gene",),  # eq. 19
    "state_probs": ("gene", "state"),  # p(k | u, s, z, pi)
    "k": ("gene",),  # a draw of k from p(k | u, s, z, pi)
}
#: Replicated observations (posterior predictive).
PREDICTIVE_VARIABLES: dict[str, tuple[str, ...]] = {"u": ("gene",), "s": ("gene",)}
#: Name of the pointwise log-likelihood variable (:func:`pointwise_log_likelihood`) in :func:`iterate_draws`.
LOG_LIKELIHOOD = "log_likelihood"

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
#: How the replicated data get their state: from p(k | data, z, pi) or from Categorical(pi).
STATES = ("posterior", "pi")
MAX_BATCH_FLOATS = 2**25  # 128 MiB of float32 per batch of draws


# ---- the replicated data: the Pyro model without observations ---------------------------------------
def replicate(
    model: FittedLike,
    sample: posterior.PosteriorSample,
    states: str | dict[str, torch.Tensor] = "posterior",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicated ``(u, s)`` for one posterior draw: the Pyro model run without observations.

    The model is conditioned on the draw's ``z`` and ``pi`` (so the replicate belongs to the same draw
    as the returned times and states) and traced with ``u = s = None``, so ``u`` and ``s`` are drawn from
    the model's likelihood (eq. 20-21). The switch penalty (eq. 27) is not part of the data model and is
    hidden. The state sites (eq. 15; ``k``, or ``k_u`` and ``k_s`` with independent coupling) are

    - ``"posterior"``: drawn from ``p(k | u, s, z, pi)`` (the enumerated posterior given the data, what
      ``infer_discrete(temperature=1)`` samples): the replicate re-uses the observation's latent state,
      the usual posterior predictive with every latent variable drawn from the posterior;
    - ``"pi"``: drawn from ``Categorical(pi)`` by the model itself (a new state for the replicate: the
      "mixed" predictive, which also checks the state mixture);
    - a dict of state tensors (e.g. from :func:`posterior_states`) to fix them.

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    sample
        One draw from :func:`velopyro.posterior.iterate_samples`.
    states
        See above.

    Returns
    -------
    tuple of torch.Tensor
        Replicated unspliced and spliced, each ``(B, G)``.
    """
    model = as_fitted(model)
    data = {"z": sample["z"].unsqueeze(-2), "pi": sample["pi"]}
    if isinstance(states, dict):
        data.update(states)
    elif states == "posterior":
        data.update(posterior_states(sample, model.config["state_coupling"]))
    elif states == "pi" and "pi_prior" in sample:  # pi integrated out: new states given the data
        data.update(get_state_coupling(model.config["state_coupling"]).collapsed_new_states(
            sample["pi_prior"], sample["pi"], sample["ll_u"], sample["ll_s"]))
    elif states != "pi":
        raise ValueError(f"states must be one of {STATES} or a dict of state tensors, got {states!r}.")
    pyro_model = poutine.block(model.model, hide=["switch_penalty"])
    fixed = poutine.condition(pyro_model, data=data)
    with torch.no_grad():
        tr = poutine.trace(fixed).get_trace(sample["idx"], None, None, sample["size_factor_u"],
                                            sample["size_factor_s"], sample.get("batch_index"),
                                            n_cells=model.n_cells)
    return tr.nodes["u"]["value"], tr.nodes["s"]["value"]


def posterior_states(sample: posterior.PosteriorSample,
                     coupling: str | StateCoupling) -> dict[str, torch.Tensor]:
    """Draws of the state sites from their posterior given the data, z and pi (eq. 15 enumerated).

    Shared coupling: ``k ~ p(k | u, s) ∝ pi_k p(u | k) p(s | k)``; independent coupling:
    ``k_u ∝ pi_k p(u | k)`` and ``k_s ∝ pi_k p(s | k)``, the exact conditionals of the model's two sites
    (what ``infer_discrete(temperature=1)`` samples).

    Parameters
    ----------
    sample
        One posterior draw.
    coupling
        The model's state coupling (:mod:`velopyro.coupling`), or its name.

    Returns
    -------
    dict of str to torch.Tensor
        ``{"k": ...}`` or ``{"k_u": ..., "k_s": ...}``, each ``(B, G)`` in 0..3.
    """
    c = get_state_coupling(coupling)
    if "pi_prior" in sample:  # pi integrated out: the exact posterior of the state sites
        return c.collapsed_posterior_states(sample["pi_prior"], sample["ll_u"], sample["ll_s"])
    return c.posterior_states(posterior.log_state_prior(sample), sample["ll_u"], sample["ll_s"])


def pointwise_log_likelihood(model: FittedLike, sample: posterior.PosteriorSample, pi: str = "prior") -> torch.Tensor:
    """Log-likelihood of each (cell, gene) pair's ``(u, s)`` for one posterior draw, the state summed out.

    - ``pi="prior"``: ``pi_ng`` integrated over its Dirichlet prior (eq. 14) as well, i.e. ``log p(u, s | z)``.
      ``pi_ng`` belongs to one (cell, gene) pair only, so this is the likelihood that leave-one-out
      needs (leaving the pair, or the cell, out returns ``pi_ng`` to its prior). With prior
      concentrations ``a`` (sum ``A``), ``E[pi_j pi_k] = (a_j a_k + [j = k] a_k) / (A (A + 1))``, so for
      independent coupling ``p = [(sum_j a_j p(u | j)) (sum_k a_k p(s | k)) + sum_k a_k p(u | k) p(s | k)]
      / (A (A + 1))`` and for shared coupling ``p = sum_k (a_k / A) p(u | k) p(s | k)``.
    - ``pi="posterior"``: conditional on the draw of ``pi`` from ``q(pi | z)``, eq. 23-24
      (:func:`velopyro.posterior.mixture_log_likelihood`, as ``VeloPyro.get_log_likelihood``).

    Parameters
    ----------
    model
        The fitted model (only its ``config["state_coupling"]`` and ``model.pi_prior`` are read).
    sample
        One posterior draw.
    pi
        ``"prior"`` or ``"posterior"``.

    Returns
    -------
    torch.Tensor
        ``(B, G)``.
    """
    coupling = model.config["state_coupling"]
    if pi == "posterior":
        return posterior.mixture_log_likelihood(sample, coupling)
    if pi != "prior":
        raise ValueError(f"pi must be 'prior' or 'posterior', got {pi!r}.")
    log_a = torch.log(model.model.pi_prior.to(sample["ll_u"].dtype))
    return get_state_coupling(coupling).prior_log_likelihood(log_a, sample["ll_u"], sample["ll_s"])


def _variable(name: str, smp: posterior.PosteriorSample, model: FittedModel,
              rep: tuple[torch.Tensor, torch.Tensor] | None, log_lik_pi: str = "prior") -> torch.Tensor:
    """The value of ``name`` for one draw, cells first."""
    if name == "z":
        return smp["z"]
    if name == "pi":
        return smp["pi"]
    if name == "time":
        return posterior.latent_time(smp, "mean", posterior.TIME_WEIGHTS, model.config["t_max"])
    if name in ("t_ind", "t_rep"):
        return smp[name]
    if name == "state_probs":
        return posterior.state_posterior(smp)
    if name == "k":
        return torch.distributions.Categorical(probs=posterior.state_posterior(smp)).sample().to(torch.int8)
    if name == "u":
        return rep[0]
    if name == "s":
        return rep[1]
    if name == LOG_LIKELIHOOD:
        return pointwise_log_likelihood(model, smp, log_lik_pi)
    raise ValueError(f"Unknown variable {name!r}; choose from {sorted(POSTERIOR_VARIABLES) + ['u', 's']}.")


def _per_cell_size(name: str, model: FittedModel) -> int:
    g = model.n_genes
    return {"z": model.config["n_latent"], "pi": 4 * g, "state_probs": 4 * g}.get(name, g)


def resolve_indices(model: FittedLike, indices: np.ndarray | Sequence[int] | None) -> np.ndarray:
    """Positions of the cells ``indices`` among the model's cells.

    Parameters
    ----------
    model
        The fitted model.
    indices
        None (all cells), integer positions, or a boolean mask over the cells.

    Returns
    -------
    numpy.ndarray
        Integer positions.
    """
    model = as_fitted(model)
    if indices is None:
        return np.arange(model.n_cells)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= model.n_cells)):
        raise ValueError(f"indices must be 1-D cell positions in [0, {model.n_cells}).")
    return idx.astype(np.int64)


def resolve_genes(model: FittedLike, genes: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    """Positions of ``genes`` among the model's genes.

    Parameters
    ----------
    model
        The fitted model.
    genes
        None (all), gene names of ``model.var_names``, integer positions, or a boolean mask.

    Returns
    -------
    numpy.ndarray
        Integer positions.
    """
    model = as_fitted(model)
    if genes is None:
        return np.arange(model.n_genes)
    if isinstance(genes, str):
        genes = [genes]
    arr = np.asarray(genes)
    if arr.dtype == bool:
        return np.flatnonzero(arr)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() >= model.n_genes):
            raise ValueError(f"gene positions must lie in [0, {model.n_genes}).")
        return arr.astype(np.int64)
    names = [str(v) for v in model.var_names]
    lookup = {n: i for i, n in enumerate(names)}
    missing = [str(g) for g in arr if str(g) not in lookup]
    if missing:
        raise ValueError(f"genes not in the model: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return np.array([lookup[str(g)] for g in arr], dtype=np.int64)


def iterate_draws(
    model: FittedLike,
    names: Sequence[str],
    n_samples: int,
    seed: int | None,
    indices: np.ndarray,
    batch_size: int,
    max_batch_floats: int = MAX_BATCH_FLOATS,
    states: str = "posterior",
    log_lik_pi: str = "prior",
) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Draw ``names`` for the cells ``indices``, batch by batch, holding one batch of draws at a time.

    Parameters
    ----------
    model
        The fitted model.
    names
        Variables of :data:`POSTERIOR_VARIABLES`, :data:`PREDICTIVE_VARIABLES` or ``"log_likelihood"``.
    n_samples
        Draws per cell.
    seed
        Seed of the draws (None: not reseeded).
    indices
        Cell positions (:func:`resolve_indices`).
    batch_size
        Largest number of cells per batch (shrunk to keep a batch under ``max_batch_floats``).
    max_batch_floats
        Memory bound of one batch of draws, in floats.
    states
        How replicates get their state (:func:`replicate`).
    log_lik_pi
        ``pi`` of :func:`pointwise_log_likelihood`.

    Yields
    ------
    tuple
        The batch's positions in ``indices`` (a slice) and ``{name: tensor}`` with the draws first
        ``(S, B, ...)``.
    """
    model = as_fitted(model)
    n_samples = check_n_samples(n_samples)
    per_cell = sum(_per_cell_size(n, model) for n in names)
    b = int(max(1, min(batch_size, max_batch_floats // max(1, n_samples * per_cell))))
    need_rep = any(n in PREDICTIVE_VARIABLES for n in names)
    with seeded(seed):  # the caller's global random state is restored when the generator finishes
        for start in range(0, len(indices), b):
            sel = indices[start:start + b]
            draws: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            for _, _, smp in posterior.iterate_samples(model.model, model.guide, model.data, n_samples=n_samples,
                                                       batch_size=len(sel), device=model.device, indices=sel):
                rep = replicate(model, smp, states) if need_rep else None
                for n in names:
                    draws[n].append(_variable(n, smp, model, rep, log_lik_pi))
            yield slice(start, start + len(sel)), {n: torch.stack(v, 0) for n, v in draws.items()}


def _summarise(x: torch.Tensor, quantiles: Sequence[float]) -> dict[str, np.ndarray]:
    """Mean, sd and quantiles over the draw axis 0."""
    xf = x.float()
    out = {"mean": xf.mean(0), "sd": xf.std(0, unbiased=False)}
    if len(quantiles):
        q = torch.quantile(xf.flatten(1), torch.as_tensor(quantiles, dtype=torch.float32), dim=0) \
            if xf.shape[0] > 1 else xf.flatten(1).expand(len(quantiles), -1)
        for qi, row in zip(quantiles, q, strict=True):
            out[f"q{qi:g}"] = row.reshape(xf.shape[1:])
    return {k: v.cpu().numpy().astype(np.float32) for k, v in out.items()}


def _collect(
    model: FittedLike,
    names: Sequence[str],
    n_samples: int,
    summaries: bool,
    quantiles: Sequence[float],
    return_draws: bool,
    seed: int | None,
    indices: np.ndarray | Sequence[int] | None,
    genes: Sequence[Any] | np.ndarray | None,
    batch_size: int,
    states: str = "posterior",
) -> dict[str, dict[str, np.ndarray]]:
    """Draw ``names`` over all batches and keep summaries and/or draws (gene axis subset to ``genes``)."""
    if not summaries and not return_draws:
        raise ValueError("Nothing to return: set summaries=True and/or return_draws=True.")
    model = as_fitted(model)
    idx = resolve_indices(model, indices)
    gpos = resolve_genes(model, genes)
    all_genes = len(gpos) == model.n_genes and np.array_equal(gpos, np.arange(model.n_genes))
    gsel = None if all_genes else torch.as_tensor(gpos)
    parts: dict[str, dict[str, list[np.ndarray]]] = {n: {} for n in names}
    for _, batch in iterate_draws(model, names, n_samples, seed, idx, batch_size, states=states):
        for n, x in batch.items():
            dims = {**POSTERIOR_VARIABLES, **PREDICTIVE_VARIABLES}.get(n, ("gene",))
            if gsel is not None and dims and dims[0] == "gene":
                x = x.index_select(2, gsel)
            if summaries:
                if n == "k":
                    freq = torch.nn.functional.one_hot(x.long(), kinetics.N_STATES).float().mean(0)
                    parts[n].setdefault("frequency", []).append(freq.cpu().numpy())
                else:
                    for key, val in _summarise(x, quantiles).items():
                        parts[n].setdefault(key, []).append(val)
            if return_draws:
                parts[n].setdefault("draws", []).append(x.cpu().numpy())
    out: dict[str, dict[str, np.ndarray]] = {}
    for n, d in parts.items():
        out[n] = {k: np.concatenate(v, axis=1 if k == "draws" else 0) for k, v in d.items()}
    return out


def sample_posterior(
    model: FittedLike,
    n_samples: int = 100,
    variables: Sequence[str] = ("z", "pi", "time", "state_probs"),
    summaries: bool = True,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    return_draws: bool = False,
    seed: int | None = 0,
    indices: np.ndarray | Sequence[int] | None = None,
    genes: Sequence[Any] | np.ndarray | None = None,
    batch_size: int = 256,
    states: str = "posterior",
) -> dict[str, dict[str, np.ndarray]]:
    """Draws of the latent variables from the variational posterior, summarised per cell (and gene).

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    n_samples
        Draws of ``q(z, pi | u, s)`` per cell.
    variables
        Any of :data:`POSTERIOR_VARIABLES`: ``"z"`` (eq. 13), ``"pi"`` (eq. 14), ``"time"`` (latent time per
        cell and gene, weighted by ``p(k | data)``), ``"t_ind"``/``"t_rep"`` (eq. 17, 19), ``"state_probs"``
        (``p(k | u, s, z, pi)``, the posterior of the state given the data), ``"k"`` (a draw from it);
        ``"u"``/``"s"`` (replicated data) are also accepted.
    summaries
        Return ``mean``, ``sd`` and the ``quantiles`` over draws (for ``"k"``: ``frequency`` of each state).
    quantiles
        Probabilities of the quantiles, stored under keys like ``"q0.05"``.
    return_draws
        Also return all draws under ``"draws"``, shape ``(n_samples, cells, ...)`` (memory:
        ``n_samples x cells x genes x 4`` bytes per cell x gene variable, x4 for ``pi``).
    seed
        Seed of the draws (None: not reseeded).
    indices
        Cells (positions) to visit; all by default.
    genes
        Genes to keep (names, positions or mask); the model always runs on all its genes.
    batch_size
        Upper bound on cells per batch (lowered automatically to bound memory).
    states
        How replicated ``"u"``/``"s"`` get their state (see :func:`replicate`).

    Returns
    -------
    dict
        ``{variable: {"mean": (cells, ...), "sd": ..., "q0.05": ..., "draws": ...}}``.
    """
    return _collect(model, list(variables), n_samples, summaries, quantiles, return_draws, seed, indices, genes,
                    batch_size, states)


def posterior_predictive(
    model: FittedLike,
    n_samples: int = 100,
    summaries: bool = True,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    return_draws: bool = False,
    seed: int | None = 0,
    indices: np.ndarray | Sequence[int] | None = None,
    genes: Sequence[Any] | np.ndarray | None = None,
    batch_size: int = 256,
    states: str = "posterior",
) -> dict[str, dict[str, np.ndarray]]:
    """Replicated unspliced and spliced data: the Pyro model without observations, per posterior draw.

    For each draw of ``q(z, pi | u, s)`` the model is run with ``u = s = None`` and ``z``, ``pi`` fixed to
    the draw (:func:`replicate`): the state from ``p(k | data, z, pi)`` (or ``Categorical(pi)`` with
    ``states="pi"``, eq. 15) and ``u_rep``, ``s_rep`` from the likelihood (eq. 20-21). The replicates are
    on the scale of the model's observations (Ms/Mu for the Normal likelihood, raw counts for count
    likelihoods).

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    n_samples
        Replicates per cell.
    summaries
        Return ``mean``, ``sd`` and ``quantiles`` per cell and gene.
    quantiles
        Probabilities of the quantiles (keys ``"q0.05"`` etc.).
    return_draws
        Also return every replicate under ``"draws"``, ``(n_samples, cells, genes)`` float32.
    seed
        Seed (None: not reseeded).
    indices
        Cells to replicate (all by default).
    genes
        Genes to keep.
    batch_size
        Upper bound on cells per batch.
    states
        ``"posterior"`` or ``"pi"`` (see :func:`replicate`).

    Returns
    -------
    dict
        ``{"u": {...}, "s": {...}}`` with the keys of :func:`sample_posterior`; the observations are
        ``model.data.u`` and ``model.data.s``.
    """
    return _collect(model, ["u", "s"], n_samples, summaries, quantiles, return_draws, seed, indices, genes,
                    batch_size, states)


def pit(
    model: FittedLike,
    n_samples: int = 100,
    seed: int | None = 0,
    randomized: bool = True,
    modality: str = "s",
    indices: np.ndarray | Sequence[int] | None = None,
    batch_size: int = 256,
    predictive: str = "conditional",
    states: str = "posterior",
) -> np.ndarray:
    """Probability integral transform (PIT) of each observation, computed on the fly.

    With ``S`` replicates ``y_1..y_S`` of an observation ``y``, ``L = #{y_i < y}`` and ``E = #{y_i = y}``
    are counted batch by batch (the draws are never stored) and

    - ``randomized=True``: ``PIT = (L + V (E + 1)) / (S + 1)`` with ``V ~ Uniform(0, 1)``: the randomised
      rank of ``y`` among the replicates; exactly uniform when ``y`` is exchangeable with them, also for
      discrete counts (the randomised PIT);
    - ``randomized=False``: the mid-rank ``(L + (E + 1) / 2) / (S + 1)``.

    Two predictive distributions:

    - ``"conditional"`` (default): one draw ``theta~ = (z, pi, k)`` of the posterior per cell
      (``k`` from ``p(k | data, z, pi)``) and ``S`` replicates from ``p(y | theta~)``: the PIT of ``y``
      under its own likelihood at a posterior draw. Because ``(y, theta~)`` has the same joint
      distribution as data and parameters generated from the model, this PIT is exactly Uniform(0, 1)
      under a correct model and an exact posterior draw (a pivotal discrepancy, Johnson 2004), with no
      double use of the data; it checks the observation model: a Poisson likelihood on over-dispersed
      counts gives a U shape.
    - ``"marginal"``: the posterior predictive, ``S`` replicates each from a new posterior draw (as
      :func:`posterior_predictive`). In-sample, it is conservative (a hump) whenever the posterior of
      ``z`` is wide compared with the noise; it answers "do the data look like the model's predictions".

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    n_samples
        Replicates per observation.
    seed
        Seed (None: not reseeded).
    randomized
        Randomise ties (needed for counts).
    modality
        ``"s"`` (spliced), ``"u"`` (unspliced) or ``"both"``.
    indices
        Cells (all by default).
    batch_size
        Cells per batch.
    predictive
        ``"conditional"`` or ``"marginal"`` (see above).
    states
        For ``"marginal"``: how replicates get their state (see :func:`replicate`).

    Returns
    -------
    numpy.ndarray
        ``(cells, genes)`` in (0, 1); ``(2, cells, genes)`` (unspliced, spliced) for ``"both"``.
    """
    n_samples = check_n_samples(n_samples)
    if modality not in ("u", "s", "both"):
        raise ValueError(f"modality must be 'u', 's' or 'both', got {modality!r}.")
    if predictive not in ("conditional", "marginal"):
        raise ValueError(f"predictive must be 'conditional' or 'marginal', got {predictive!r}.")
    model = as_fitted(model)
    idx = resolve_indices(model, indices)
    mods = ("u", "s") if modality == "both" else (modality,)
    out = np.empty((len(mods), len(idx), model.n_genes), dtype=np.float32)
    coupling = model.config["state_coupling"]
    with seeded(seed):
        for start in range(0, len(idx), batch_size):
            sel = idx[start:start + batch_size]
            less: list = [0] * len(mods)
            equal: list = [0] * len(mods)
            draws = posterior.iterate_samples(model.model, model.guide, model.data,
                                              n_samples=1 if predictive == "conditional" else n_samples,
                                              batch_size=len(sel), device=model.device, indices=sel)
            for _, _, smp in draws:
                if predictive == "conditional":
                    fixed = posterior_states(smp, coupling)
                    for _ in range(n_samples):
                        _count_ranks(model, smp, fixed, mods, less, equal)
                else:
                    _count_ranks(model, smp, states, mods, less, equal)
            for j in range(len(mods)):
                lt, eq = less[j].float().cpu(), equal[j].float().cpu()
                v = torch.rand(lt.shape) if randomized else torch.full(lt.shape, 0.5)
                out[j, start:start + len(sel)] = ((lt + v * (eq + 1.0)) / (n_samples + 1.0)).numpy()
    return out if modality == "both" else out[0]


def _count_ranks(model: FittedModel, smp: posterior.PosteriorSample, states: str | dict[str, torch.Tensor],
                 mods: Sequence[str], less: list, equal: list) -> None:
    """Add one replicate's ``rep < obs`` and ``rep == obs`` indicators to the running counts."""
    rep = dict(zip(("u", "s"), replicate(model, smp, states), strict=True))
    for j, m in enumerate(mods):
        less[j] = less[j] + (rep[m] < smp[m]).to(torch.int32)
        equal[j] = equal[j] + (rep[m] == smp[m]).to(torch.int32)


def ks_uniform(pit_values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of pooled PIT values from Uniform(0, 1).

    Parameters
    ----------
    pit_values
        PIT values of any shape (e.g. from :func:`pit`); NaNs are dropped.

    Returns
    -------
    float
        ``sup |F_n(x) - x|``.
    """
    x = np.asarray(pit_values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float(stats.kstest(x, "uniform").statistic)


def ks_per_gene(pit_values: np.ndarray) -> np.ndarray:
    """KS distance from Uniform(0, 1) of each gene's PIT values.

    Parameters
    ----------
    pit_values
        ``(cells, genes)`` PIT values.

    Returns
    -------
    numpy.ndarray
        ``(genes,)``.
    """
    x = np.sort(np.asarray(pit_values, dtype=np.float64), axis=0)
    n = x.shape[0]
    hi = np.arange(1, n + 1)[:, None] / n - x
    lo = x - np.arange(0, n)[:, None] / n
    return np.maximum(hi.max(0), lo.max(0))


def histograms(
    model: FittedLike,
    edges: np.ndarray | Sequence[float] | None = None,
    n_samples: int = 20,
    modality: str = "s",
    genes: Sequence[Any] | np.ndarray | None = None,
    indices: np.ndarray | Sequence[int] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    states: str = "posterior",
) -> dict[str, np.ndarray]:
    """Histograms of the observations and of each posterior predictive replicate, per gene and pooled.

    The input of the density/ECDF checks and of the rootogram, accumulated batch by batch: memory is
    ``n_samples x genes x bins`` counts, never the draws themselves. Values outside the edges fall into
    the first or last bin.

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    edges
        Bin edges (increasing). Default: for count likelihoods the integers ``-0.5, 0.5, ...`` up to the
        99.5th percentile of the observed counts (at most 60 bins, the last one collecting the tail), else
        50 bins spanning the observed range widened by 10%.
    n_samples
        Replicates (one histogram each).
    modality
        ``"s"`` or ``"u"``.
    genes
        Genes with their own histograms (names, positions or mask); all by default. The pooled
        histograms always cover all of the model's genes.
    indices
        Cells; all by default.
    seed
        Seed.
    batch_size
        Upper bound on cells per batch.
    states
        ``"posterior"`` or ``"pi"`` (see :func:`replicate`).

    Returns
    -------
    dict of str to numpy.ndarray
        ``edges`` (nb + 1,); ``observed`` (genes, nb) and ``replicated`` (n_samples, genes, nb) numbers of
        cells per bin; ``pooled_observed`` (nb,) and ``pooled_replicated`` (n_samples, nb) over all genes
        and cells; ``genes`` (positions).
    """
    if modality not in ("u", "s"):
        raise ValueError(f"modality must be 'u' or 's', got {modality!r}.")
    model = as_fitted(model)
    gpos = resolve_genes(model, genes)
    idx = resolve_indices(model, indices)
    obs_all = (model.data.u if modality == "u" else model.data.s)[torch.as_tensor(idx)]
    if edges is None:
        edges = default_edges(obs_all.numpy(), model.likelihood.is_count)
    edges_t = torch.as_tensor(np.asarray(edges, dtype=np.float64))
    nb = len(edges_t) - 1
    if nb < 1:
        raise ValueError("edges needs at least two values.")
    inner = edges_t[1:-1].float()
    gsel = torch.as_tensor(gpos)
    n_g = len(gpos)
    goff = (torch.arange(n_g) * nb)[None, :]

    def per_gene(x: torch.Tensor) -> torch.Tensor:  # (B, G_sel) -> (G_sel, nb)
        b = torch.bucketize(x.float().contiguous(), inner, right=True)
        return torch.bincount((b + goff).flatten(), minlength=n_g * nb).view(n_g, nb).double()

    def pooled(x: torch.Tensor) -> torch.Tensor:  # (B, G) -> (nb,)
        return torch.bincount(torch.bucketize(x.float().contiguous(), inner, right=True).flatten(),
                              minlength=nb).double()

    n_samples = check_n_samples(n_samples)
    rep_g = torch.zeros(n_samples, n_g, nb, dtype=torch.float64)
    rep_p = torch.zeros(n_samples, nb, dtype=torch.float64)
    for _, batch in iterate_draws(model, [modality], n_samples, seed, idx, batch_size, states=states):
        x = batch[modality].cpu()
        for d in range(x.shape[0]):
            rep_g[d] += per_gene(x[d].index_select(1, gsel))
            rep_p[d] += pooled(x[d])
    return {"edges": edges_t.numpy(), "observed": per_gene(obs_all.index_select(1, gsel)).numpy(),
            "replicated": rep_g.numpy(), "pooled_observed": pooled(obs_all).numpy(),
            "pooled_replicated": rep_p.numpy(), "genes": gpos}


def default_edges(x: np.ndarray, is_count: bool, n_bins: int = 50, max_bins: int = 60) -> np.ndarray:
    """Bin edges for :func:`histograms`: integers for counts, else ``n_bins`` over the widened range.

    Parameters
    ----------
    x
        Observations.
    is_count
        Integer bins centred on 0, 1, 2, ...
    n_bins
        Bins for continuous data.
    max_bins
        Most integer bins.

    Returns
    -------
    numpy.ndarray
        Edges.
    """
    x = np.asarray(x, dtype=np.float64)
    if is_count:
        top = int(np.clip(np.ceil(np.percentile(x, 99.5)), 1, max_bins - 1))
        return np.arange(-0.5, top + 1.0, 1.0)
    lo, hi = float(np.min(x)), float(np.max(x))
    pad = 0.1 * max(hi - lo, 1e-6)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)
