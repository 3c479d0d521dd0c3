"""Categorical covariates (batches, samples): reading them, their technical effect, and a batch-mixing score.

A covariate is one or more categorical ``obs`` columns (``VeloPyro(adata, batch_key=...)``). Each cell's
categories are coded as integers, ``(cells, K)`` for K keys, the first category of each key being the
reference. The covariate enters the model in two places, and nowhere else:

- the encoder q(z | u, s, b) (eq. 22) sees the one-hot codes next to ``concat(u, s)``, and by default
  (``batch_encoder="corrected"``) the observations mapped back to the reference batch by the current
  fitted effect, ``(x - c_b) / a_b`` (:meth:`BatchEffect.inverse`), so that cells in the same state reach
  the same z whatever their batch;
- the observation model (eq. 20-21) sees the kinetic mean of the state after a per-batch, gene-wise
  affine map (:class:`BatchEffect`)::

      mean'_ng = exp(sum_k log_a[k, b_nk, g]) * mean_ng + sum_k c[k, b_nk, g]      (one map per modality)

  with the reference category of every key fixed at the identity (``log_a = c = 0``), so the kinetics
  (rates, times, velocity) stay on the reference batch's scale and are shared by all batches. For the
  Normal likelihood on min-max scaled moments this is a per-batch scale and offset of the expected
  abundance (``"scale_offset"``); for count likelihoods the scale alone (``"scale"``) is a per-batch,
  gene-wise detection efficiency: the expected count becomes
  ``size_factor (scale_g a_bg mean + background_g)``.

The effect starts at moment matching of each category against the reference (:meth:`BatchEffect.initialise`)
and is then fitted with the rates, as a point estimate. The time heads (eq. 16-19) do not see the batch:
latent time and velocity are functions of z alone, the biological state, and a batch can only change how
that state is observed.

Which design: ``benchmarks/covariates.py`` compares them on two-batch simulations (results in
``benchmarks/results/covariates/``, summary in ``docs/covariates.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validation import VelopyroInputError, check_batch_categories, check_batch_key, format_names
from ._warn import caller_stacklevel
from .config import BATCH_EFFECTS, BATCH_ENCODERS  # declared without torch (the command line reads them)

__all__ = ["BATCH_EFFECTS", "BATCH_ENCODERS", "BatchEffect", "read_batches", "check_batch_index", "one_hot",
           "batch_mixing_score", "combined_labels"]

_MODALITIES = ("u", "s")


def _as_keys(batch_key: str | Sequence[str]) -> list[str]:
    return check_batch_key(batch_key, allow_none=False)


def read_batches(
    adata: Any,
    batch_key: str | Sequence[str],
    categories: Sequence[Sequence[str]] | None = None,
) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """Code the categorical ``obs`` columns ``batch_key`` as integers (the AnnData is not modified).

    Parameters
    ----------
    adata
        AnnData whose ``obs`` holds the columns.
    batch_key
        One ``obs`` column name or a list of them.
    categories
        The categories of each key to code against (a saved model's); by default each column's own:
        a pandas categorical's categories in their order, else the sorted distinct values as strings.

    Returns
    -------
    tuple
        ``codes`` ``(cells, K)`` int64 (0 is each key's first, reference, category), the keys, and the
        categories of each key (strings).

    Raises
    ------
    VelopyroInputError
        A missing column, a missing value (NaN) in a column, or, with ``categories``, a category the
        saved model was not fitted on.
    """
    keys = _as_keys(batch_key)
    if categories is not None and len(categories) != len(keys):
        raise VelopyroInputError(f"batch_key names {len(keys)} column(s) but {len(categories)} category list(s) "
                                 "were given; pass one list per key.")
    if categories is not None:  # no string split into characters, no category twice, none empty
        checked = check_batch_categories(dict(zip(keys, categories, strict=True)))
        categories = [checked[k] for k in keys]
    obs = adata.obs
    codes = np.empty((adata.n_obs, len(keys)), dtype=np.int64)
    cats_out: list[list[str]] = []
    for j, key in enumerate(keys):
        if key not in obs.columns:
            raise VelopyroInputError(f"batch_key {key!r} is not an obs column (obs has {format_names(obs.columns)}); "
                                     "pass the name of a categorical obs column.")
        col = obs[key]
        n_missing = int(col.isna().sum())
        if n_missing:
            raise VelopyroInputError(f"obs[{key!r}] has {n_missing} missing value(s) (NaN); give those cells a "
                                     "category (e.g. 'unknown') or drop them before building the model.")
        values = col.astype(str).to_numpy()
        if categories is not None:
            cats = [str(c) for c in categories[j]]
            unknown = sorted(set(values) - set(cats))
            if unknown:
                raise VelopyroInputError(
                    f"obs[{key!r}] holds categories the model was not fitted on ({format_names(unknown)}; fitted: "
                    f"{format_names(cats)}); a batch effect is only known for fitted batches: refit with these cells.")
        elif hasattr(col, "cat"):
            present = set(values)
            cats = [str(c) for c in col.cat.categories if str(c) in present]
        else:
            cats = sorted(set(values))
        if categories is None:
            if len(cats) == 1:
                warnings.warn(f"obs[{key!r}] has a single category ({cats[0]!r}): a batch covariate with one batch "
                              "has no effect; drop it from batch_key.", UserWarning, stacklevel=caller_stacklevel())
            elif len(cats) > max(2, adata.n_obs // 2):
                raise VelopyroInputError(
                    f"obs[{key!r}] has {len(cats)} distinct values for {adata.n_obs} cells: it looks continuous or "
                    "per-cell, not a batch; pass a categorical column (e.g. the sample or batch label).")
        lookup = {c: i for i, c in enumerate(cats)}
        codes[:, j] = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
        cats_out.append(cats)
    return codes, keys, cats_out


def check_batch_index(batch_index: torch.Tensor | None, n_batch: int, n_keys: int) -> None:
    """Fail loudly unless the covariate codes are ``(B, K)`` integers with the model's K keys.

    A weight passed where the codes belong (a caller that hands the model five data tensors and then
    ``kl_weight``) fails here instead of being read as codes.

    Parameters
    ----------
    batch_index
        The codes handed to the model or guide, or None (allowed without covariates).
    n_batch
        B, the minibatch's cells.
    n_keys
        K, the model's covariate keys (0: none).
    """
    if batch_index is None:
        if n_keys:
            raise TypeError(f"this model has {n_keys} batch covariate(s): pass their (B, K) codes as batch_index "
                            "(VeloData.batch hands them out).")
        return
    if (not isinstance(batch_index, torch.Tensor) or batch_index.dim() != 2 or batch_index.shape[0] != n_batch
            or batch_index.dtype.is_floating_point or batch_index.shape[1] != n_keys):
        raise TypeError(f"batch_index must be ({n_batch}, {n_keys}) integer codes (VeloData.batch hands them out "
                        f"after the size factors, before kl_weight), got {getattr(batch_index, 'shape', batch_index)}.")


def one_hot(batch_index: torch.Tensor, n_categories: Sequence[int]) -> torch.Tensor:
    """Concatenated one-hot codes of every key: ``(cells, sum(n_categories))`` float.

    Parameters
    ----------
    batch_index
        ``(cells, K)`` integer codes.
    n_categories
        Number of categories of each of the K keys.

    Returns
    -------
    torch.Tensor
        The encoder's covariate input (``(cells, 0)`` without keys).
    """
    parts = [torch.nn.functional.one_hot(batch_index[:, k], int(n)).to(torch.get_default_dtype())
             for k, n in enumerate(n_categories)]
    if not parts:
        return batch_index.new_zeros((batch_index.shape[0], 0), dtype=torch.get_default_dtype())
    return torch.cat(parts, dim=-1)


class BatchEffect(nn.Module):
    """Per-batch, gene-wise affine map of the kinetic mean (see the module docstring).

    Parameters
    ----------
    n_categories
        Number of categories of each key (the first of each is the reference, fixed at the identity).
    n_genes
        G.
    design
        ``"scale_offset"`` (``a mean + c``), ``"scale"`` (``a mean``: a detection efficiency) or
        ``"none"`` (the identity: the covariate acts through the encoder only).
    """

    def __init__(self, n_categories: Sequence[int], n_genes: int, design: str = "scale_offset") -> None:
        super().__init__()
        if design not in BATCH_EFFECTS or design == "auto":
            raise ValueError(f"design must be one of {BATCH_EFFECTS[1:]}, got {design!r}.")
        self.n_categories = tuple(int(n) for n in n_categories)
        self.design = design
        total = sum(self.n_categories)
        starts = np.cumsum((0,) + self.n_categories[:-1]).astype(np.int64)
        self.register_buffer("starts", torch.as_tensor(starts), persistent=False)
        mask = torch.ones(total, 1)
        mask[torch.as_tensor(starts)] = 0.0  # the reference category of each key
        self.register_buffer("free", mask, persistent=False)
        # "raw_" names: point estimates without weight decay, like the rates (velopyro.train._parameter_groups)
        for m in _MODALITIES:
            if design in ("scale", "scale_offset"):
                setattr(self, f"raw_log_scale_{m}", nn.Parameter(torch.zeros(total, n_genes)))
            if design == "scale_offset":
                setattr(self, f"raw_offset_{m}", nn.Parameter(torch.zeros(total, n_genes)))

    def _per_cell(self, name: str, batch_index: torch.Tensor) -> torch.Tensor | None:
        table = getattr(self, name, None)
        if table is None or not self.n_categories:
            return None
        rows = batch_index + self.starts  # (B, K) rows of the stacked tables
        return (table * self.free)[rows].sum(-2)  # (B, G), summed over keys

    def forward(self, mean: torch.Tensor, modality: str, batch_index: torch.Tensor | None) -> torch.Tensor:
        """The observed-scale mean ``a_b mean + c_b`` of cells ``(..., B, G)`` in batches ``batch_index``.

        Parameters
        ----------
        mean
            Kinetic mean, ``(..., B, G)`` (a leading enumeration or state axis is fine).
        modality
            ``"u"`` or ``"s"``.
        batch_index
            ``(B, K)`` codes, or None (the identity).

        Returns
        -------
        torch.Tensor
            Same shape as ``mean``.
        """
        if batch_index is None or batch_index.shape[-1] == 0:
            return mean
        log_a = self._per_cell(f"raw_log_scale_{modality}", batch_index)
        c = self._per_cell(f"raw_offset_{modality}", batch_index)
        out = mean if log_a is None else mean * torch.exp(log_a)
        return out if c is None else out + c

    def inverse(self, x: torch.Tensor, modality: str, batch_index: torch.Tensor | None) -> torch.Tensor:
        """Observations mapped back to the reference batch's scale, ``(x - c_b) / a_b``, with the current
        (detached) effect: the encoder's corrected input (``batch_encoder="corrected"``).

        Parameters
        ----------
        x
            Observations ``(B, G)``.
        modality
            ``"u"`` or ``"s"``.
        batch_index
            ``(B, K)`` codes, or None (the identity).

        Returns
        -------
        torch.Tensor
            Same shape as ``x``; no gradient flows into the effect's parameters from here.
        """
        if batch_index is None or batch_index.shape[-1] == 0:
            return x
        log_a = self._per_cell(f"raw_log_scale_{modality}", batch_index)
        c = self._per_cell(f"raw_offset_{modality}", batch_index)
        out = x if c is None else x - c.detach()
        return out if log_a is None else out * torch.exp(-log_a.detach())

    def initialise(self, u: np.ndarray, s: np.ndarray, codes: np.ndarray) -> None:
        """Start the effect at moment matching: each category's per-gene mean (and spread) against the reference's.

        If the batches cover the same biology, a gene's distribution in category b is the reference's
        through ``a mean + c``, so ``a = sd_b / sd_ref`` and ``c = mean_b - a mean_ref`` (``"scale_offset"``)
        or ``a = mean_b / mean_ref`` (``"scale"``). Each key is matched on its own (the other keys ignored).
        Only a starting point: the ELBO refines it (and where compositions differ between batches, moves it).

        Parameters
        ----------
        u, s
            Observations on the kinetic scale, cells x genes.
        codes
            ``(cells, K)`` integer codes.
        """
        if self.design == "none":
            return
        starts = self.starts.cpu().numpy()
        with torch.no_grad():
            for m, x in (("u", u), ("s", s)):
                x = np.asarray(x, dtype=np.float64)
                log_a = np.zeros((sum(self.n_categories), x.shape[1]))
                c = np.zeros_like(log_a)
                for k, n in enumerate(self.n_categories):
                    ref = x[codes[:, k] == 0]
                    for b in range(1, n):
                        xb = x[codes[:, k] == b]
                        if len(ref) < 2 or len(xb) < 2:
                            continue
                        if self.design == "scale":
                            num, den = xb.mean(0), ref.mean(0)
                        else:
                            num, den = xb.std(0), ref.std(0)
                        ok = (num > 1e-8) & (den > 1e-8)
                        la = np.clip(np.log(np.where(ok, num, 1.0) / np.where(ok, den, 1.0)), -3.0, 3.0)
                        log_a[starts[k] + b] = la
                        if self.design == "scale_offset":
                            c[starts[k] + b] = xb.mean(0) - np.exp(la) * ref.mean(0)
                getattr(self, f"raw_log_scale_{m}").copy_(torch.as_tensor(log_a, dtype=torch.float32))
                if self.design == "scale_offset":
                    getattr(self, f"raw_offset_{m}").copy_(torch.as_tensor(c, dtype=torch.float32))

    def effects(self) -> dict[str, torch.Tensor]:
        """The fitted tables by name (``scale_u``, ``offset_u``, ...), each ``(sum(n_categories), G)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``scale_*`` as multipliers (1 for the reference categories), ``offset_*`` additive (0 there).
        """
        out = {}
        for m in _MODALITIES:
            if hasattr(self, f"raw_log_scale_{m}"):
                out[f"scale_{m}"] = torch.exp(getattr(self, f"raw_log_scale_{m}") * self.free)
            if hasattr(self, f"raw_offset_{m}"):
                out[f"offset_{m}"] = getattr(self, f"raw_offset_{m}") * self.free
        return out


def combined_labels(codes: np.ndarray) -> np.ndarray:
    """One label per cell from the codes of several keys (their combination), ``(cells,)`` int.

    Parameters
    ----------
    codes
        ``(cells,)`` or ``(cells, K)`` integer codes or labels.

    Returns
    -------
    numpy.ndarray
        Integer labels, one per distinct combination.
    """
    codes = np.asarray(codes)
    if codes.ndim == 1:
        return np.unique(codes, return_inverse=True)[1].ravel()
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel()


def batch_mixing_score(x: np.ndarray, batch: np.ndarray, n_neighbors: int = 15) -> float:
    """How well cells of different batches mix in a representation: 1 mixed, 0 separated.

    For each cell, the batch labels of its ``n_neighbors`` nearest neighbours (Euclidean, the cell
    itself excluded) give a plug-in entropy ``H_n = -sum_b p_nb log p_nb``. The score is the mean of
    ``H_n`` over cells divided by the entropy of the batches' overall proportions (what a neighbourhood
    drawn at random from all cells has), clipped to [0, 1]. Batches in disjoint regions score 0. A
    random neighbourhood of 15 cells from two equal batches has ``E[H_n] / log 2`` of about 0.95 (the
    plug-in entropy's small-sample bias), so perfect mixing reads about 0.95 at the default.

    Parameters
    ----------
    x
        ``(cells, features)``, e.g. the latent z (``VeloPyro.get_latent_representation()``).
    batch
        ``(cells,)`` labels, or ``(cells, K)`` codes of several keys (their combinations are the batches).
    n_neighbors
        Neighbours per cell.

    Returns
    -------
    float
        The normalised mean neighbourhood batch entropy; NaN with a single batch.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    labels = combined_labels(batch)
    if x.ndim != 2 or len(labels) != x.shape[0]:
        raise VelopyroInputError(f"x has shape {x.shape} and batch {np.shape(batch)}; pass one row of x per cell.")
    n_batches = labels.max() + 1 if len(labels) else 0
    if n_batches < 2:
        return float("nan")
    k = int(min(n_neighbors, x.shape[0] - 1))
    if k < 1:
        raise VelopyroInputError(f"batch_mixing_score needs at least 2 cells, got {x.shape[0]}.")
    nn_idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    counts = np.zeros((x.shape[0], n_batches))
    np.add.at(counts, (np.repeat(np.arange(x.shape[0]), k), labels[nn_idx].ravel()), 1.0)
    p = counts / k
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
    freq = np.bincount(labels, minlength=n_batches) / len(labels)
    h_ref = -(freq * np.log(np.where(freq > 0, freq, 1.0))).sum()
    return float(np.clip(h.mean() / h_ref, 0.0, 1.0))
