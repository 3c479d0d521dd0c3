"""Conversion of a fitted :class:`~velopyro.api.VeloPyro` to ArviZ ``InferenceData``.

:func:`to_arviz` is the one place where velopyro talks to ArviZ. It draws from the variational
posterior batch by batch (:mod:`velopyro.ppc`), then builds the groups

- ``posterior``: ``z`` (cell, latent; eq. 13), ``pi`` (cell, gene, state; eq. 14; with
  ``pi_guide="collapsed"`` the exact ``E[pi | u, s, z]`` of each draw of z), ``time`` (cell, gene;
  latent time weighted by ``p(k | data)``), and the per-gene point estimates ``alpha``, ``beta``,
  ``gamma``, ``t_s`` and the likelihood's parameters (e.g. ``sigma_u``), repeated over draws;
- ``posterior_predictive``: replicated ``u`` and ``s`` (cell, gene): the Pyro model without observations
  (eq. 15, 20-21);
- ``observed_data``: the ``u`` and ``s`` the model was fitted on (Ms/Mu, or raw counts for count
  likelihoods);
- ``log_likelihood``: ``obs``, the log-likelihood of each cell's observations ``(u, s)`` given the draw
  of ``z``, with the state ``k`` summed out and ``pi`` integrated over its Dirichlet prior (eq. 14-15,
  :func:`velopyro.ppc.pointwise_log_likelihood`), summed over genes (dims ``cell``), or per cell and
  gene (``per_gene_log_likelihood=True``, dims ``cell, gene``);
- ``constant_data``: per-cell size factors.

Pyro's SVI gives independent draws of ``q`` without chains: every sampled array gets a chain axis of
length 1, so ``az.loo``, ``az.waic``, ``az.compare`` and ``az.plot_ppc`` work as for MCMC output.

Leave-one-out and local latent variables: every cell has its own ``z`` (eq. 13) and every (cell, gene)
pair its own ``pi`` (eq. 14). Leaving a pair or a cell out sends them back to their prior, so the
pointwise log-likelihood integrates ``pi`` over its prior (leaving it at the draw from ``q(pi | z)``,
``log_likelihood_pi="posterior"``, makes the importance ratios of PSIS-LOO explode). ``z`` cannot be
integrated in closed form: for LOO over cells (the default, one value per cell) the importance ratio
is the inverse likelihood of a whole cell, and Pareto ``k`` is above 0.7 for most cells of any fit,
well specified or not (the known limit of PSIS-LOO with observation-level latent variables); LOO over
(cell, gene) pairs (``per_gene_log_likelihood=True``) changes ``z``'s posterior little per left-out pair
and is the reliable choice for comparing likelihoods. Check ``loo.pareto_k`` either way.

The log-likelihood is stored in float64, per pair too. It is computed in float32, and for a pair whose
log-likelihood hardly varies across draws (a gene the cell barely expresses, with a near-constant rate)
the draws differ by a few float32 units in the last place. ArviZ's PSIS exponentiates them in the
input's precision: in float32 the tail exceedances ``exp(x) - exp(cutoff)`` round to zero, its
generalised Pareto fit divides by zero and ``elpd_loo`` becomes NaN (seen on the full pancreas Poisson
fit). In float64 the same values give finite exceedances.

ArviZ 0.x (``InferenceData``, ``az.from_dict(posterior=..., ...)``) is the tested path. ArviZ 1.x
(``xarray.DataTree``; needs Python >= 3.12) takes one nested ``{group: {var: array}}`` dict and
``sample_dims``; :func:`_build` has that branch, written against arviz-base's documented ``from_dict``
signature but not exercised by the tests here (only 0.x installs on Python 3.11).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import kinetics, ppc
from .fitted import FittedLike, FittedModel, as_fitted

__all__ = ["to_arviz", "estimate_nbytes", "DEFAULT_VAR_NAMES"]

#: Posterior variables drawn per cell by default (the per-gene point estimates are always added).
DEFAULT_VAR_NAMES = ("z", "pi", "time")
LOG_LIKELIHOOD_NAME = "obs"


def estimate_nbytes(
    model: FittedLike,
    n_samples: int,
    var_names: Sequence[str],
    n_cells: int,
    n_genes: int,
    include_posterior_predictive: bool,
    per_gene_log_likelihood: bool,
) -> int:
    """Bytes of draws :func:`to_arviz` would hold (before xarray's own overhead).

    Draws are float32 except the log-likelihood, which is float64 (see the module docstring).

    Parameters
    ----------
    model
        The fitted model.
    n_samples
        Draws.
    var_names
        Per-cell posterior variables.
    n_cells, n_genes
        Cells and genes kept.
    include_posterior_predictive
        Count the replicated ``u`` and ``s``.
    per_gene_log_likelihood
        Count a cell x gene log-likelihood instead of one value per cell.

    Returns
    -------
    int
        Bytes.
    """
    per = {"z": model.config["n_latent"], "pi": 4 * n_genes, "state_probs": 4 * n_genes}
    floats = sum(per.get(v, n_genes) for v in var_names)
    floats += 2 * n_genes if include_posterior_predictive else 0
    doubles = n_genes if per_gene_log_likelihood else 1
    return int(n_samples * n_cells * (4 * floats + 8 * doubles))


def to_arviz(
    model: FittedLike,
    n_samples: int = 100,
    per_gene_log_likelihood: bool = False,
    include_posterior_predictive: bool = True,
    indices: np.ndarray | Sequence[int] | None = None,
    seed: int | None = 0,
    var_names: Sequence[str] | None = None,
    *,
    genes: Sequence[Any] | np.ndarray | None = None,
    batch_size: int = 256,
    max_gb: float = 2.0,
    log_likelihood_pi: str = "prior",
    states: str = "posterior",
) -> Any:
    """Posterior draws, posterior predictive, observations and pointwise log-likelihood as ArviZ data.

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro` or :class:`~velopyro.fitted.FittedModel`.
    n_samples
        Draws of ``q(z, pi | u, s)`` (the ``draw`` dimension; ``chain`` has length 1).
    per_gene_log_likelihood
        Keep the log-likelihood per cell and gene (dims ``cell, gene``): LOO then leaves out one
        (cell, gene) pair's ``(u, s)``. Default: summed over genes, LOO over cells.
    include_posterior_predictive
        Add the ``posterior_predictive`` group (replicated ``u``, ``s``).
    indices
        Cells (positions) to include; all by default. With fewer cells the object is smaller; the
        model still conditions on each included cell's own data.
    seed
        Seed of the draws (None: not reseeded).
    var_names
        Per-cell posterior variables (:data:`velopyro.ppc.POSTERIOR_VARIABLES`; default
        ``("z", "pi", "time")``); the per-gene point estimates are always included.
    genes
        Genes to keep in cell x gene variables, ``observed_data`` and ``log_likelihood`` (names,
        positions or a mask; all by default). The log-likelihood is summed over these genes.
    batch_size
        Upper bound on cells per batch while sampling.
    max_gb
        Refuse (``MemoryError``) if the draws would exceed this many GB; lower ``n_samples``, or pass
        ``indices``, ``genes`` or a smaller ``var_names`` (``pi`` is the largest: 4 floats per cell
        and gene and draw).
    log_likelihood_pi
        ``"prior"``: ``pi`` integrated over its prior in the pointwise log-likelihood (see the module
        docstring); ``"posterior"``: at the draw of ``q(pi | z)``, the values of
        ``VeloPyro.get_log_likelihood``.
    states
        How the replicated data get their state: ``"posterior"`` (from ``p(k | data, z, pi)``) or ``"pi"``
        (see :func:`velopyro.ppc.replicate`).

    Returns
    -------
    arviz.InferenceData
        (or an ``xarray.DataTree`` with ArviZ >= 1.0) with dims ``chain``, ``draw``, ``cell``, ``gene``,
        ``state``, ``latent`` and coordinates from ``adata.obs_names``/``var_names`` and
        :data:`velopyro.kinetics.STATE_NAMES`.

    Examples
    --------
    >>> idata = velopyro.convert.to_arviz(model, n_samples=200, var_names=["z"])
    >>> az.loo(idata)
    """
    model = as_fitted(model)
    var_names = list(DEFAULT_VAR_NAMES if var_names is None else var_names)
    unknown = [v for v in var_names if v not in ppc.POSTERIOR_VARIABLES]
    if unknown:
        raise ValueError(f"Unknown var_names {unknown}; choose from {sorted(ppc.POSTERIOR_VARIABLES)}.")
    idx = ppc.resolve_indices(model, indices)
    gpos = ppc.resolve_genes(model, genes)
    nbytes = estimate_nbytes(model, n_samples, var_names, len(idx), len(gpos), include_posterior_predictive,
                             per_gene_log_likelihood)
    if nbytes > max_gb * 1e9:
        raise MemoryError(
            f"to_arviz would hold {nbytes / 1e9:.1f} GB of draws ({n_samples} draws x {len(idx)} cells x "
            f"{len(gpos)} genes; variables {var_names}). Lower n_samples, pass indices= (cells), genes=, or "
            f"a smaller var_names (pi is 4 floats per cell, gene and draw), or raise max_gb."
        )

    names = var_names + (["u", "s"] if include_posterior_predictive else []) + [ppc.LOG_LIKELIHOOD]
    draws = _draw(model, names, n_samples, seed, idx, gpos, batch_size, per_gene_log_likelihood, states,
                  log_likelihood_pi)

    cell_dims = {**ppc.POSTERIOR_VARIABLES, **ppc.PREDICTIVE_VARIABLES}
    post = {v: draws[v][None] for v in var_names}
    dims: dict[str, list[str]] = {v: ["cell", *cell_dims[v]] for v in var_names}
    for name, val in model.get_rates().items():
        post[name] = np.broadcast_to(val[gpos].astype(np.float32), (1, n_samples, len(gpos))).copy()
        dims[name] = ["gene"]
    pp = {m: draws[m][None] for m in ("u", "s")} if include_posterior_predictive else None
    data_u = model.data.u.numpy()[np.ix_(idx, gpos)]
    data_s = model.data.s.numpy()[np.ix_(idx, gpos)]
    observed = {"u": data_u, "s": data_s}
    dims.update({"u": ["cell", "gene"], "s": ["cell", "gene"]})
    log_lik = {LOG_LIKELIHOOD_NAME: draws[ppc.LOG_LIKELIHOOD][None]}
    dims[LOG_LIKELIHOOD_NAME] = ["cell", "gene"] if per_gene_log_likelihood else ["cell"]
    constant = {"size_factor_u": model.data.size_factor_u.numpy()[idx, 0],
                "size_factor_s": model.data.size_factor_s.numpy()[idx, 0]}
    dims.update({"size_factor_u": ["cell"], "size_factor_s": ["cell"]})
    coords = {
        "cell": np.asarray([str(c) for c in model.obs_names])[idx],
        "gene": np.asarray([str(g) for g in model.var_names])[gpos],
        "state": list(kinetics.STATE_NAMES),
        "latent": np.arange(model.config["n_latent"]),
    }
    attrs = {"inference_library": "pyro", "inference_method": "SVI (amortised variational posterior)",
             "velopyro_likelihood": model.config["likelihood"],
             "velopyro_state_coupling": model.config["state_coupling"],
             "log_likelihood": ("per cell and gene" if per_gene_log_likelihood else "per cell, summed over genes")
             + f"; pi: {log_likelihood_pi}", "replicate_states": states}
    groups = {"posterior": post, "posterior_predictive": pp, "observed_data": observed,
              "log_likelihood": log_lik, "constant_data": constant}
    return _build({k: v for k, v in groups.items() if v is not None}, coords, dims, attrs)


def _draw(model: FittedModel, names: list[str], n_samples: int, seed: int | None, idx: np.ndarray,
          gpos: np.ndarray, batch_size: int, per_gene: bool, states: str, log_lik_pi: str) -> dict[str, np.ndarray]:
    """Draws ``(n_samples, cells, ...)`` of ``names``; the log-likelihood summed over ``gpos`` unless per gene."""
    import torch

    gsel = torch.as_tensor(gpos)
    cell_dims = {**ppc.POSTERIOR_VARIABLES, **ppc.PREDICTIVE_VARIABLES, ppc.LOG_LIKELIHOOD: ("gene",)}
    out: dict[str, np.ndarray] = {}
    for sl, batch in ppc.iterate_draws(model, names, n_samples, seed, idx, batch_size, states=states,
                                        log_lik_pi=log_lik_pi):
        for n, x in batch.items():
            if cell_dims[n] and cell_dims[n][0] == "gene":
                x = x.index_select(2, gsel)
            if n == ppc.LOG_LIKELIHOOD:  # float64, see the module docstring
                x = x.double().sum(-1) if not per_gene else x.double()
            arr = x.cpu().numpy()
            if n not in out:
                dtype = np.int8 if n == "k" else np.float64 if n == ppc.LOG_LIKELIHOOD else np.float32
                out[n] = np.empty((n_samples, len(idx), *arr.shape[2:]), dtype=dtype)
            out[n][:, sl] = arr
    return out


def _arviz_major() -> int:
    import arviz as az

    try:
        return int(str(az.__version__).split(".")[0])
    except ValueError:  # pragma: no cover - unusual version strings
        return 0


def _build(groups: dict[str, dict[str, np.ndarray]], coords: dict[str, Any], dims: dict[str, list[str]],
           attrs: dict[str, Any]) -> Any:
    """Assemble the ArviZ object from ``{group: {var: array}}`` (sampled arrays lead with chain, draw)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.2x announces its 1.0 refactor on import
        import arviz as az

    if _arviz_major() >= 1:  # pragma: no cover - ArviZ 1.x needs Python >= 3.12; sketched, not tested here
        # arviz-base: from_dict(data: {group: {var: array}}, *, sample_dims, coords, dims, attrs...) returns
        # an xarray.DataTree. Our sampled arrays lead with (chain=1, draw), so the default sample_dims
        # ("chain", "draw") apply and arviz-stats' loo/compare work unchanged; observed_data and
        # constant_data have no sample dims. Passing the draws without the chain axis and
        # sample_dims=["sample"] is the alternative the notes mention, but then every arviz-stats call
        # needs sample_dims=["sample"] too.
        return az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
    kwargs = {g: v for g, v in groups.items()}
    idata = az.from_dict(**kwargs, coords=coords, dims=dims, attrs=attrs)
    return idata
