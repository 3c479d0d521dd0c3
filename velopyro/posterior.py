"""Posterior queries: velocity, latent time, states, expression fit, latent z, predictive draws.

Everything here runs in batches of cells and reduces over posterior samples inside each batch, so the
memory needed is ``batch_size x G x 4`` floats whatever the number of cells or samples; only the
requested per-cell (x gene) results are kept.

Each posterior sample traces the guide on a batch, drawing ``z ~ q(z | u, s)`` and ``pi ~ q(pi | z)``
(eq. 22; whatever families the guide uses), and replays the model against it (:func:`draw`): the model
maps z through its time heads and the kinetics (eq. 16-19, 1-12) and records them, and scores the
observations at each enumerated state. A read-out then weighs the four states either by
the posterior of the state given the data, ``p(k | u, s, z, pi) ∝ pi_k p(u | k) p(s | k)`` (the
enumerated posterior of eq. 15, 20-21; ``"posterior"``), or by ``pi`` itself (``"pi"``, as the veloVI
reference does).

With ``pi_guide="collapsed"`` pi is integrated out of the model (:mod:`velopyro.collapsed`). A draw then
has no pi of its own: ``pi`` is the exact posterior mean ``E[pi | u, s, z]`` (a mixture of
``Dirichlet(0.25 + e_k)`` over the exact state posterior), and the state posterior weighs the states by
their prior, ``p(k | u, s, z) ∝ p(u | k) p(s | k)`` (the exact posterior of the shared state; with
independent coupling, that of the state given that u and s share it). :func:`log_state_prior` is the one
place that reads pi for the state posterior. The weights ``"pi"`` of such a draw are ``pi_z``, the guide's
fitted :class:`~velopyro.nn.StateHead` at the draw's z (the amortised E[E[pi | u, s, z] | z], a smooth
function of z as q(pi | z) is), where the guide has one; else ``pi``.

Defaults, chosen by the benchmarks (``python -m benchmarks.run_all``, read-out table of
``benchmarks/results/results.md``, the same fits scored both ways):

- velocity: ``pi`` (:data:`VELOCITY_WEIGHTS`). It is a smooth function of the cell's latent z, and gave the
  better direction: pancreas CBDir 0.438 vs 0.377 and in-cluster coherence 0.916 vs 0.815, velocity sign
  accuracy 0.983 vs 0.981 (scVelo simulator) and 0.980 vs 0.975 (velopyro simulator). The data
  posterior tracks each gene's velocity magnitude better (per-gene Pearson with the true velocity,
  median over genes, 0.984 vs 0.973 and 0.993 vs 0.929): pass ``state_weights="posterior"`` for
  gene-level analyses of velocity.
- latent time and states: the data posterior (:data:`TIME_WEIGHTS`). Latent time Spearman 0.926 vs
  0.892 and 0.323 vs 0.323 (gene median), 0.960 vs 0.923 and 0.460 vs 0.381 (cell level); state accuracy
  0.695 vs 0.601 on the velopyro simulator (0.812 vs 0.833 on scVelo's).
- directional uncertainty: the data posterior (:data:`UNCERTAINTY_WEIGHTS`). Each draw of pi mixes
  induction and repression in every cell whatever its data, and that mixing, not the data, then sets the
  spread of the draws' directions; weighed by the data posterior, the draws spread only where the data leave
  the state open. On simulated data with one cell type held at steady state (no direction in its data;
  ``python -m benchmarks.uncertainty_groundtruth flags``), the cosine variance ranks those cells first with
  ROC AUC 0.98 ± 0.02 over 5 seeds, against 0.36 ± 0.13 weighed by pi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from pyro import poutine

from . import kinetics
from ._validation import VelopyroInputError, check_int, check_n_samples
from .coupling import StateCoupling, get_state_coupling
from .data import VeloData

__all__ = ["PosteriorSample", "iterate_samples", "draw", "reduce_samples", "log_state_prior", "state_posterior",
           "velocity", "latent_time", "mixture_log_likelihood", "VELOCITY_WEIGHTS", "TIME_WEIGHTS",
           "UNCERTAINTY_WEIGHTS", "QUERY_BATCH_SIZE"]

STATE_WEIGHTS = ("posterior", "pi")
#: Default state weights of velocity (see the module docstring).
VELOCITY_WEIGHTS = "pi"
#: Default state weights of latent time, state assignment and expression fit (see the module docstring).
TIME_WEIGHTS = "posterior"
#: Default state weights of the directional uncertainty (see the module docstring).
UNCERTAINTY_WEIGHTS = "posterior"
#: Default number of cells per batch of a posterior query (memory ``batch x genes x 4`` floats per draw).
QUERY_BATCH_SIZE = 256
#: Plates of the model (cells, genes): enumerated states take the dimensions to their left, as in training.
MAX_PLATE_NESTING = 2


class PosteriorSample(dict):
    """One posterior draw for a batch of cells (a dict of tensors with attribute access).

    Keys: ``idx`` (B,), ``u``, ``s`` (B, G) observed, ``size_factor_u``/``_s`` (B, 1), ``batch_index``
    (B, K) covariate codes (K = 0 without covariates), ``z`` (B, d),
    ``z_loc`` (B, d), ``pi`` (B, G, 4), ``rho_ind``, ``rho_rep``, ``t_ind``, ``t_rep`` (B, G),
    ``u_bar``, ``s_bar`` (B, G, 4), ``ll_u``, ``ll_s`` (B, G, 4) per-state log-likelihoods,
    ``rates`` (dict of (G,)), ``kinetics`` (the model's :class:`~velopyro.kinetics.Kinetics`, whose closed
    forms give the velocities); for a collapsed model also ``pi_prior`` (4,), the Dirichlet concentrations
    pi was integrated over, and ``log_state_prior`` (4,) (see :func:`log_state_prior`).

    The kinetic keys and ``rates`` are what the model recorded (every value of its ``kinetic_state`` and of
    its ``rates()``; :meth:`VeloVIModel.readouts <velopyro.model.VeloVIModel.readouts>`), so a model that
    records more carries more.
    """

    def __getattr__(self, name: str) -> Any:
        """The value of key ``name``; ``AttributeError`` for a missing key (so ``getattr(s, name, default)``,
        ``hasattr`` and ``copy`` work as on any object)."""
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"PosteriorSample has no key {name!r}") from None


def log_state_prior(sample: PosteriorSample) -> torch.Tensor:
    """Log weights of the states in the state posterior: ``log pi`` of the draw, or, for a collapsed model,
    the prior weight of the shared state (:meth:`StateCoupling.collapsed_state_log_prior
    <velopyro.coupling.StateCoupling.collapsed_state_log_prior>`).

    Parameters
    ----------
    sample
        One posterior draw.

    Returns
    -------
    torch.Tensor
        Broadcastable to ``(B, G, 4)``.
    """
    if "log_state_prior" in sample:
        return sample["log_state_prior"]
    return torch.log(sample["pi"].clamp_min(1e-30))


def state_posterior(sample: PosteriorSample) -> torch.Tensor:
    """``p(k | u, s, z, pi) ∝ pi_k p(u | k) p(s | k)``, shape ``(B, G, 4)`` (``pi_k``: :func:`log_state_prior`).

    Parameters
    ----------
    sample
        One posterior draw.

    Returns
    -------
    torch.Tensor
        Probabilities over the four states.
    """
    logits = log_state_prior(sample) + sample["ll_u"] + sample["ll_s"]
    # torch's CPU softmax over a last axis of 4 runs ~20x slower than over a leading axis of 4 (measured on
    # (256, 200, 4)); the states go first for the reduction and come back as a view
    return torch.softmax(logits.movedim(-1, 0).contiguous(), dim=0).movedim(0, -1)


def state_weights(sample: PosteriorSample, kind: str | torch.Tensor) -> torch.Tensor:
    """Weights of the four states: the data posterior or pi.

    Parameters
    ----------
    sample
        One posterior draw.
    kind
        ``"posterior"`` or ``"pi"``, or weights already computed (returned as they are).

    Returns
    -------
    torch.Tensor
        ``(B, G, 4)``.
    """
    if torch.is_tensor(kind):
        return kind
    if kind not in STATE_WEIGHTS:
        raise VelopyroInputError(f"state_weights must be one of {STATE_WEIGHTS}, got {kind!r}")
    if kind == "posterior":
        return state_posterior(sample)
    # pi integrated out: the fitted state head's function of z, when the guide has one (velopyro.nn.StateHead)
    return sample["pi_z"] if "pi_z" in sample else sample["pi"]


def mixture_log_likelihood(sample: PosteriorSample, coupling: str | StateCoupling) -> torch.Tensor:
    """Log-likelihood of the observations with the state marginalised, per cell and gene ``(B, G)``.

    ``"shared"``: ``log sum_k pi_k p(u | k) p(s | k)``; ``"independent"``:
    ``log sum_k pi_k p(u | k) + log sum_k pi_k p(s | k)`` (eq. 23-24). For a collapsed model, the model's
    own marginal with pi integrated over its prior (:meth:`StateCoupling.prior_log_likelihood
    <velopyro.coupling.StateCoupling.prior_log_likelihood>`).

    Parameters
    ----------
    sample
        One posterior draw.
    coupling
        The model's state coupling (:mod:`velopyro.coupling`), or its name.

    Returns
    -------
    torch.Tensor
        ``(B, G)``.
    """
    c = get_state_coupling(coupling)
    if "pi_prior" in sample:
        return c.prior_log_likelihood(torch.log(sample["pi_prior"]), sample["ll_u"], sample["ll_s"])
    return c.mixture_log_likelihood(log_state_prior(sample), sample["ll_u"], sample["ll_s"])


def velocity(sample: PosteriorSample, statistic: str = "mean", mode: str = "spliced",
             weights: str | torch.Tensor = VELOCITY_WEIGHTS) -> torch.Tensor:
    """Velocity ``ds/dt`` (or ``du/dt``) per cell and gene from the per-state derivatives.

    Parameters
    ----------
    sample
        One posterior draw.
    statistic
        ``"mean"``: sum over states weighted by the state probabilities; ``"max"``: the velocity of the
        most probable state.
    mode
        ``"spliced"`` (ds/dt) or ``"unspliced"`` (du/dt).
    weights
        ``"posterior"`` or ``"pi"`` (see the module docstring), or precomputed ``(B, G, 4)`` weights.

    Returns
    -------
    torch.Tensor
        ``(B, G)``.
    """
    du, ds = sample["kinetics"].state_velocities(sample["u_bar"], sample["s_bar"], sample["t_ind"], sample["rates"])
    if mode not in ("spliced", "unspliced"):
        raise ValueError(f"mode must be 'spliced' or 'unspliced', got {mode!r}.")
    v = ds if mode == "spliced" else du
    return _summarise_states(v, state_weights(sample, weights), statistic)


def latent_time(sample: PosteriorSample, statistic: str = "mean", weights: str | torch.Tensor = TIME_WEIGHTS,
                t_max: float = 20.0) -> torch.Tensor:
    """Time per cell and gene: induction ``t_ind``, induction steady state ``t_s``, repression ``t_rep``,
    repression steady state 0 (no expression, indistinguishable from the start; as the reference).

    Parameters
    ----------
    sample
        One posterior draw.
    statistic
        ``"mean"`` (weighted by state probabilities) or ``"max"`` (time of the most probable state).
    weights
        ``"posterior"`` or ``"pi"``, or precomputed ``(B, G, 4)`` weights.
    t_max
        Unused beyond documentation of the scale: times lie in ``[0, t_max]``.

    Returns
    -------
    torch.Tensor
        ``(B, G)``.
    """
    t_s = sample["rates"]["t_s"].expand_as(sample["t_ind"])
    times = torch.stack([sample["t_ind"], t_s, sample["t_rep"], torch.zeros_like(t_s)], dim=-1)
    return _summarise_states(times, state_weights(sample, weights), statistic)


def _summarise_states(x: torch.Tensor, w: torch.Tensor, statistic: str) -> torch.Tensor:
    if statistic == "mean":
        return (x * w).sum(-1)
    if statistic == "max":
        return torch.gather(x, -1, w.argmax(-1, keepdim=True)).squeeze(-1)
    raise ValueError(f"statistic must be 'mean' or 'max', got {statistic!r}.")


def iterate_samples(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    *,
    n_samples: int = 1,
    batch_size: int = QUERY_BATCH_SIZE,
    device: torch.device | str = "cpu",
    indices: np.ndarray | None = None,
) -> Iterator[tuple[int, int, PosteriorSample]]:
    """Yield ``(batch_number, sample_number, PosteriorSample)`` over batches of cells and samples.

    Each draw is the guide traced on the batch and the model replayed against it (:func:`draw`), so any
    guide with the model's signature and sites works here and in every read-out.

    Parameters
    ----------
    model, guide
        Fitted modules (used in eval mode).
    data
        Inputs on the host.
    n_samples
        Posterior draws per cell, a positive integer (else :class:`~velopyro._validation.VelopyroInputError`).
    batch_size
        Cells per batch, a positive integer.
    device
        Where to compute.
    indices
        Cells to visit (all by default), in this order.

    Yields
    ------
    tuple
        Batch number, sample number and the draw.
    """
    check_n_samples(n_samples)
    check_int(batch_size, "batch_size", minimum=1, example=QUERY_BATCH_SIZE)
    dev = torch.device(device)
    model.eval()
    guide.eval()
    idx_all = np.arange(data.n_cells) if indices is None else np.asarray(indices)
    with torch.no_grad():
        for bno, start in enumerate(range(0, len(idx_all), batch_size)):
            b = torch.as_tensor(idx_all[start:start + batch_size])
            batch = data.batch(b, dev)
            for sno in range(n_samples):
                yield bno, sno, draw(model, guide, *batch, n_cells=data.n_cells)


def draw(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    idx: torch.Tensor,
    u: torch.Tensor,
    s: torch.Tensor,
    size_factor_u: torch.Tensor | None = None,
    size_factor_s: torch.Tensor | None = None,
    batch_index: torch.Tensor | None = None,
    n_cells: int | None = None,
) -> PosteriorSample:
    """One posterior draw for a batch of cells: the guide traced, the model replayed against it.

    The guide runs as in training (``poutine.trace``), drawing z, and pi unless the model integrates it
    out, from its own families. The model is then run with the guide's values (``poutine.replay``), the
    observations, and its state sites enumerated in parallel as in training (``poutine.enum``; eq. 15,
    23-24), inside :meth:`VeloVIModel.readouts <velopyro.model.VeloVIModel.readouts>`, so the kinetics
    (eq. 16-19, 1-12) and the rates come from the model's own deterministic sites. The per-state
    log-likelihoods ``log p(u | k)``, ``log p(s | k)`` are the model's observation sites scored at each
    enumerated state (eq. 20-21). A model without a pi site (``pi_guide="collapsed"``) gets pi's
    read-outs from its state coupling (:meth:`StateCoupling.collapsed_readouts
    <velopyro.coupling.StateCoupling.collapsed_readouts>`).

    Call it under ``torch.no_grad()`` with both modules in eval mode (as :func:`iterate_samples` does).

    Parameters
    ----------
    model, guide
        The Pyro model (a :class:`~velopyro.model.VeloVIModel`) and any guide with the model's signature
        that samples ``"z"`` (and ``"pi"`` when the model has it); ``z_loc`` is the mean of its z site.
    idx, u, s, size_factor_u, size_factor_s, batch_index
        A batch (:meth:`velopyro.data.VeloData.batch`; ``batch_index``: the covariate codes, ``(B, 0)`` or None
        without covariates).
    n_cells
        Size of the cells plate (only scales log-densities; no effect on the draw).

    Returns
    -------
    PosteriorSample
        The draw.
    """
    args = (idx, u, s, size_factor_u, size_factor_s, batch_index)
    guide_tr = poutine.trace(guide).get_trace(*args, n_cells=n_cells)
    replayed = poutine.replay(poutine.block(model, hide=["switch_penalty"]), trace=guide_tr)
    enumerated = poutine.enum(replayed, first_available_dim=-1 - MAX_PLATE_NESTING)
    with model.readouts():
        model_tr = poutine.trace(enumerated).get_trace(*args, n_cells=n_cells)
    nodes = model_tr.nodes
    recorded = {name: site["value"] for name, site in nodes.items()
                if site["type"] == "sample" and site["infer"].get("_deterministic")}
    rates = {name[len("rates."):]: v for name, v in recorded.items() if name.startswith("rates.")}
    fields = {name: v for name, v in recorded.items() if not name.startswith("rates.")}
    ll_u, ll_s = _per_state_log_prob(nodes["u"]), _per_state_log_prob(nodes["s"])
    z = nodes["z"]["value"]
    if "pi" in nodes:
        fields["pi"] = nodes["pi"]["value"]
    elif getattr(model, "state_prior", None) is not None:  # pi a function of z in the model (pi_guide="conditional")
        fields["pi"] = model.state_prior(z.reshape(z.shape[0], -1))
    else:  # pi integrated out of the model
        fields.update(model.coupling.collapsed_readouts(model.pi_prior, ll_u, ll_s))
        head = getattr(guide, "state_head", None)
        if head is not None and bool(head.fitted):  # the read-out of pi as a function of z (velopyro.nn.StateHead)
            fields["pi_z"] = head(z.reshape(z.shape[0], -1))
    return PosteriorSample(idx=idx, u=u, s=s, size_factor_u=size_factor_u, size_factor_s=size_factor_s,
                           batch_index=batch_index, z=z.reshape(z.shape[0], -1),
                           z_loc=_site_mean(guide_tr.nodes["z"]).reshape(z.shape[0], -1),
                           ll_u=ll_u, ll_s=ll_s, rates=rates, kinetics=model.kinetics, **fields)


def _per_state_log_prob(site: dict) -> torch.Tensor:
    """``log p(x | k)`` of an observation site under parallel enumeration of its state, ``(B, G, 4)``."""
    lp = site["fn"].log_prob(site["value"])
    cells_genes = lp.shape[-2:]
    lp = lp.reshape(-1, *cells_genes)  # the one enumerated state dimension in front (the others have size 1)
    if lp.shape[0] != kinetics.N_STATES:
        raise RuntimeError(f"observation site {site['name']!r} is not enumerated over the {kinetics.N_STATES} "
                           f"states (log-density shape {tuple(site['fn'].log_prob(site['value']).shape)}).")
    return lp.movedim(0, -1)


def _site_mean(site: dict) -> torch.Tensor:
    """Mean of a guide site's distribution (``z_loc`` of a draw)."""
    try:
        return site["fn"].mean
    except NotImplementedError:
        raise NotImplementedError(f"the guide's {site['name']!r} distribution ({type(site['fn']).__name__}) "
                                  "has no closed-form mean; give it a .mean to read z_loc.") from None


def reduce_samples(
    fn: Callable[[PosteriorSample], dict[str, torch.Tensor]],
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    *,
    n_samples: int = 1,
    batch_size: int = QUERY_BATCH_SIZE,
    device: torch.device | str = "cpu",
    indices: np.ndarray | None = None,
    on_batch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Average ``fn(sample)`` over posterior draws, batch by batch, and stack over cells.

    Parameters
    ----------
    fn
        Maps a draw to a dict of tensors whose first axis is the batch's cells.
    model, guide, data, n_samples, batch_size, device, indices
        As :func:`iterate_samples`.
    on_batch
        Streaming: called as ``on_batch(batch_number, means)`` with each batch's posterior means as soon as
        its draws are done (batch ``b`` holds the visited cells ``b * batch_size ...``); nothing is kept
        and an empty dict is returned, so the memory does not grow with the number of cells.

    Returns
    -------
    dict of str to numpy.ndarray
        The posterior means, first axis over the visited cells.
    """
    check_n_samples(n_samples)  # before anything: 0 draws would average nothing (uninitialised outputs)
    out: dict[str, list[np.ndarray]] = {}
    acc: dict[str, torch.Tensor] = {}
    count = 0
    last_b = -1

    def flush() -> None:
        means = {k: (v / count).cpu().numpy() for k, v in acc.items()}
        if on_batch is not None:
            on_batch(last_b, means)
        else:
            for k, v in means.items():
                out.setdefault(k, []).append(v)
        acc.clear()

    for bno, _, sample in iterate_samples(model, guide, data, n_samples=n_samples, batch_size=batch_size,
                                          device=device, indices=indices):
        if bno != last_b:
            if acc:
                flush()
            count, last_b = 0, bno
        for k, v in fn(sample).items():
            acc[k] = acc[k] + v if k in acc else v.clone()
        count += 1
    if acc:
        flush()
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}
