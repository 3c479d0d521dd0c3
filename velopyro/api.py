"""The AnnData-facing class: :class:`VeloPyro`.

A thin layer: it validates and reads the layers, builds the Pyro model (:mod:`velopyro.model`) and
guide (:mod:`velopyro.guide`), hands them to the training loop (:mod:`velopyro.train`) and answers
queries with :mod:`velopyro.posterior`. Results go back to AnnData under scVelo's keys.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _disk, kinetics, posterior
from ._registry import check_registered
from ._rng import seeded
from ._validation import (
    RATE_INITS,
    VelopyroInputError,
    check_batch_categories,
    check_batch_key,
    check_constant_genes,
    check_counts,
    check_expression,
    check_layer_pair,
    check_model_options,
    check_n_samples,
    format_names,
)
from ._warn import caller_stacklevel
from .checkpoint import checkpoint_path, load_checkpoint
from .config import MODEL_DEFAULTS as _D
from .config import N_SAMPLES, ModelConfig
from .coupling import STATE_COUPLINGS
from .covariates import BATCH_EFFECTS, BATCH_ENCODERS, BatchEffect, read_batches
from .data import VeloData
from .fitted import FittedModel
from .guide import GUIDES, VeloVIGuide, get_guide
from .kinetics import Kinetics, get_kinetics
from .likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .model import BETA_INIT, VeloVIModel, steady_state_ratio, switch_targets
from .train import TrainConfig, resolve_device, split_indices, train_svi

__all__ = ["VeloPyro"]

_MODEL_FILE = "model.pt"
_CONFIG_FILE = "config.json"
_FORMAT = 2  # 2: model.pt holds tensors only (read with weights_only=True)


#: The starts of gamma / beta that ``rate_init="select"`` fits, in this order.
RATE_STARTS = ("constant", "steady_state")


def _fresh_likelihood(likelihood: Any) -> Likelihood:
    """A new likelihood from a name or class, or a deep copy of an instance (never the caller's object)."""
    return copy.deepcopy(likelihood) if isinstance(likelihood, Likelihood) else get_likelihood(likelihood)


class VeloPyro:
    """veloVI RNA velocity as a Pyro program, fitted on an AnnData.

    Parameters
    ----------
    adata
        Cells x genes with unspliced and spliced layers. For the default Normal likelihood these are
        kNN-smoothed and per-gene min-max scaled to [0, 1] (``velopyro.pp.preprocess`` writes ``Ms``/``Mu``);
        for count likelihoods they are raw counts. The AnnData is read, never modified, except by
        :meth:`write_to_adata`; the two layers are copied, so later edits of them do not change the model.
        Large data: a path to an ``.h5ad`` file or a ``.zarr`` store, or an AnnData opened with
        ``anndata.read_h5ad(path, backed="r")``: the layers stay on disk and training reads each minibatch
        from there (see ``docs/large_data.md`` and :mod:`velopyro._disk`).
    spliced_layer, unspliced_layer
        Layer names (``"X"`` for ``adata.X``). Default: ``"Ms"``/``"Mu"`` for the Normal likelihood and
        the raw counts (``"raw_spliced"``/``"raw_unspliced"`` if present, else ``"spliced"``/``"unspliced"``)
        for count likelihoods.
    likelihood
        ``"normal"`` (eq. 20-21), ``"poisson"``, ``"negative_binomial"`` or a
        :class:`~velopyro.likelihoods.Likelihood` instance (the model fits a copy of it: the instance is left
        unchanged).
    state_coupling
        ``"independent"`` (separate state mixtures for u and s, eq. 23-24, what the reference optimises)
        or ``"shared"`` (one state for u and s, the exact marginal of the generative process, eq. 15).
    pi_guide
        ``"dirichlet"`` (default; eq. 22 as in veloVI) or ``"logistic_normal"`` (a softmax of a Gaussian:
        about 30% less time per step on CPU, but a looser ELBO and less accurate latent time in
        ``benchmarks/``: it cannot match the Dirichlet(0.25) prior where the data say little about pi) or
        ``"collapsed"`` (pi integrated out of the model exactly, eq. 14-15: no q(pi | z), no pi KL;
        read-outs weighted by ``"pi"`` use the exact posterior mean ``E[pi | u, s, z]``) or ``"conditional"`` (no
        Dirichlet: pi is a function of z in the model, ``p(k | z) = Categorical(pi(z))``, k enumerated exactly;
        a collapsed fit's cost with the state probabilities a smooth function of z), or the name of a guide
        registered with :func:`velopyro.guide.register_guide` (any z and pi families).
    n_latent
        d, the dimension of z (10).
    n_hidden, n_layers, dropout_rate
        Network shape (reference: 256, 1, 0.1).
    t_max
        The time scale (20).
    switch_penalty
        lambda of eq. 25 (0.2).
    size_factor_key
        For count likelihoods, an ``obs`` column of per-cell size factors used for both modalities;
        by default each modality's total counts over the model's genes divided by their median.
    rate_init
        Where gamma / beta starts, which decides on which side of a gene's steady-state line its cells are
        read (induction above it, positive velocity) where the trajectory does not pin the ratio down.
        ``"constant"``: every gene at the reference's beta = 0.97, gamma = 0.31; ``"steady_state"``: gamma at
        beta times the gene's steady-state slope of u on s (:func:`velopyro.model.steady_state_ratio`,
        scVelo's deterministic estimate); ``"select"``: :meth:`fit` trains from both starts with the same seed
        and split and keeps the fit with the lower validation loss (-ELBO per held-out cell), a choice that
        uses no labels (``history["rate_init"]`` names the start kept, ``history["rate_init_candidates"]``
        both losses); it costs two fits (twice the training time), and a ``checkpoint_dir`` holds one
        subdirectory per start. ``"auto"`` (default): the constant start, one fit, for every likelihood.
        On the development suite (``benchmarks/suite.py``, 3 seeds) the constant start is level with or
        better than the steady-state start on 9 of its 11 rows (all simulations, the 600-cell and
        Alpha-less pancreas subsamples) and worse on full pancreas and its gap subsample
        (``benchmarks/results/suite/results.md``). Neither single start is right on every data set.
    batch_key
        Categorical ``obs`` column(s) of technical covariates (batches, samples), or None. The codes enter
        the encoder of z and a per-batch, gene-wise map of the observed mean (:mod:`velopyro.covariates`);
        latent time and velocity stay shared, on the first (reference) category's scale. A missing
        column or a missing value is an error; a column with one category a warning.
    batch_effect
        The covariate's effect on the observation model: ``"auto"`` (default: ``"scale_offset"`` for the
        Normal likelihood, a per-batch scale and offset of the min-max scaled moments; ``"scale"`` for
        count likelihoods, a per-batch detection efficiency), ``"scale_offset"``, ``"scale"`` or ``"none"``
        (the encoder only). Chosen by ``benchmarks/covariates.py`` (``docs/covariates.md``).
    batch_encoder
        What the encoder of z sees of the covariate: ``"corrected"`` (default) the observations mapped back
        to the reference batch by the current fitted effect, ``(x - c_b) / a_b``, and the one-hot codes;
        ``"onehot"`` the raw observations and the one-hot codes (scVI's conditional encoder).
    batch_categories
        The categories of each key, ``{key: [category, ...]}``, to code ``obs`` against (a saved model's,
        which :meth:`load` passes); by default read from ``obs``, the first being the reference.
    kinetics
        The transcription kinetics, a name registered in :mod:`velopyro.kinetics` or a registered
        :class:`~velopyro.kinetics.Kinetics` subclass: ``"constant"`` (default; veloVI's constant rate in
        induction, eq. 1-12) or ``"time_dependent"`` (velovi's ``time_dep_transcription_rate``: the rate
        relaxes from ``alpha`` to ``alpha_1`` at rate ``lambda_alpha``). See ``docs/kinetics.md``.

    Every option is checked before any work (:data:`velopyro._validation.MODEL_OPTION_CHECKS`, the table
    :meth:`load` applies to a saved ``config.json`` too): integers are integers (``n_latent``, ``n_hidden``
    and ``n_layers`` at least 1, ``n_hidden`` at most 65536), ``t_max`` is finite and positive,
    ``dropout_rate`` in [0, 1), ``switch_penalty`` non-negative, the two layers differ, ``batch_key`` is a
    column name or a list of them and ``batch_categories`` lists each category once; a mistake raises a
    one-line :class:`~velopyro._validation.VelopyroInputError`. A view of a backed AnnData is refused (the
    layers would be read from the whole file): load the subset or write it to its own file.

    Examples
    --------
    >>> adata = velopyro.datasets.pancreas()
    >>> velopyro.pp.preprocess(adata)
    >>> model = velopyro.VeloPyro(adata)
    >>> model.fit()
    >>> model.write_to_adata()  # layers velocity, fit_t; var fit_alpha, ...
    """

    def __init__(
        self,
        adata: Any,
        spliced_layer: str | None = _D["spliced_layer"],
        unspliced_layer: str | None = _D["unspliced_layer"],
        *,
        likelihood: str | Likelihood = _D["likelihood"],
        state_coupling: str = _D["state_coupling"],
        pi_guide: str = _D["pi_guide"],
        n_latent: int = _D["n_latent"],
        n_hidden: int = _D["n_hidden"],
        n_layers: int = _D["n_layers"],
        dropout_rate: float = _D["dropout_rate"],
        t_max: float = _D["t_max"],
        switch_penalty: float = _D["switch_penalty"],
        size_factor_key: str | None = _D["size_factor_key"],
        rate_init: str = _D["rate_init"],
        batch_key: str | list[str] | None = _D["batch_key"],
        batch_effect: str = _D["batch_effect"],
        batch_encoder: str = _D["batch_encoder"],
        batch_categories: dict[str, list[str]] | None = _D["batch_categories"],
        kinetics: str | type[Kinetics] = _D["kinetics"],
    ) -> None:
        # every option through the one table of velopyro._validation (types, ranges, choices), before any work
        check_model_options(dict(
            spliced_layer=spliced_layer, unspliced_layer=unspliced_layer, likelihood=likelihood,
            state_coupling=state_coupling, pi_guide=pi_guide, n_latent=n_latent, n_hidden=n_hidden,
            n_layers=n_layers, dropout_rate=dropout_rate, t_max=t_max, switch_penalty=switch_penalty,
            size_factor_key=size_factor_key, rate_init=rate_init, batch_key=batch_key, batch_effect=batch_effect,
            batch_encoder=batch_encoder, batch_categories=batch_categories, kinetics=kinetics))
        batch_categories = check_batch_categories(batch_categories)
        if state_coupling not in STATE_COUPLINGS:
            raise ValueError(f"state_coupling must be one of {tuple(STATE_COUPLINGS)}, got {state_coupling!r}.")
        if pi_guide not in GUIDES:
            raise ValueError(f"pi_guide must be one of {sorted(GUIDES)}, got {pi_guide!r}.")
        if rate_init not in RATE_INITS:
            raise ValueError(f"rate_init must be one of {RATE_INITS}, got {rate_init!r}.")
        if batch_encoder not in BATCH_ENCODERS:
            raise ValueError(f"batch_encoder must be one of {BATCH_ENCODERS}, got {batch_encoder!r}.")
        if batch_effect not in BATCH_EFFECTS:
            raise ValueError(f"batch_effect must be one of {BATCH_EFFECTS}, got {batch_effect!r}.")
        kin = get_kinetics(kinetics)
        lik = _fresh_likelihood(likelihood)  # a copy of an instance: building sets its parameters up
        #: The .h5ad file / zarr store the data are read from during training (None: in memory).
        self.store = _disk.store_path(adata) if _disk.is_on_disk(adata) else None
        if getattr(adata, "isbacked", False) and getattr(adata, "is_view", False):
            raise VelopyroInputError(
                f"adata is a view ({adata.n_obs} cells x {adata.n_vars} genes) of the backed AnnData of "
                f"{str(adata.filename)!r}; velopyro reads the layers from that file, which holds every cell and gene, "
                "not the subset: load the subset "
                "(adata = adata.to_memory()) or write it to its own file (adata.to_memory().write_h5ad('subset.h5ad')) "
                "and pass that."
            )
        if self.store is not None:
            if not getattr(adata, "isbacked", False):  # a path: obs and var only, the matrices stay on disk
                import anndata

                adata = anndata.AnnData(obs=_disk.read_frame(self.store, "obs"),
                                        var=_disk.read_frame(self.store, "var"))
            layers = _disk.layer_names(self.store)
            spliced_layer, unspliced_layer = _default_layers(dict.fromkeys(layers), lik, spliced_layer,
                                                             unspliced_layer, has_layers=True)
        else:
            spliced_layer, unspliced_layer = _default_layers(adata, lik, spliced_layer, unspliced_layer)
        check_layer_pair(spliced_layer, unspliced_layer)
        if batch_effect == "auto":
            batch_effect = "scale" if lik.is_count else "scale_offset"
        if batch_key is not None and lik.is_count and batch_effect == "scale_offset":
            raise VelopyroInputError(f"batch_effect='scale_offset' can make the expected count of likelihood "
                                     f"{lik.name!r} negative; use batch_effect='scale' (a detection efficiency).")
        codes, batch_keys, batch_cats = None, None, None
        if batch_key is not None:
            keys = check_batch_key(batch_key)
            known = None if batch_categories is None else [batch_categories.get(k) for k in keys]
            if known is not None and any(c is None for c in known):
                raise VelopyroInputError(f"batch_categories {sorted(batch_categories)} does not cover batch_key "
                                         f"{batch_key!r}; pass the categories of every key (or none).")
            codes, batch_keys, cats = read_batches(adata, batch_key, known)
            batch_cats = dict(zip(batch_keys, cats, strict=True))
        self.adata = adata
        # the resolved options, as velopyro.config.ModelConfig declares them: config.json, checkpoints and
        # uns["velopyro"]["config"] hold this dict
        self.config: dict[str, Any] = dataclasses.asdict(ModelConfig(
            spliced_layer=spliced_layer, unspliced_layer=unspliced_layer, likelihood=lik.name,
            state_coupling=state_coupling, pi_guide=pi_guide, n_latent=int(n_latent), n_hidden=int(n_hidden),
            n_layers=int(n_layers), dropout_rate=float(dropout_rate), t_max=float(t_max),
            switch_penalty=float(switch_penalty), size_factor_key=size_factor_key, rate_init=rate_init,
            batch_key=batch_keys, batch_effect=batch_effect if batch_keys else None, batch_categories=batch_cats,
            batch_encoder=batch_encoder if batch_keys else None,
            kinetics=kin.name,
        ))
        self._likelihood_arg = likelihood
        self._sub: _disk.StreamedInputs | None = None
        if self.store is None:
            self.data, self._kinetic = self._read(adata, lik)
        else:
            self.data, self._kinetic = self._read_store(adata, lik)
        if codes is not None:
            self.data.batch_index = torch.from_numpy(codes)
        self.n_cells, self.n_genes = int(self.data.n_cells), len(adata.var_names)
        #: The fitted data's gene and cell names (outputs are only written to AnnData with the same ones).
        self.var_names = np.asarray(adata.var_names, dtype=str)
        self.obs_names = np.asarray(adata.obs_names, dtype=str)
        self.model: VeloVIModel | None = None
        self.guide: VeloVIGuide | None = None
        self.history: dict[str, Any] = {}
        self.train_indices = np.arange(self.n_cells)
        self.validation_indices = np.arange(0)
        self.is_trained = False
        self.device = torch.device("cpu")
        with seeded(0):
            self._build(lik, seed=0)

    # ---- data ----------------------------------------------------------------------------------------
    def _read(self, adata: Any, lik: Likelihood) -> tuple[VeloData, tuple[np.ndarray, np.ndarray]]:
        cfg = self.config
        # always a copy: editing adata's layers after building the model must not change the model
        # (two float32 cells x genes arrays: 59 MB at pancreas scale, 3,696 x 2,000)
        s, u = check_expression(adata, cfg["spliced_layer"], cfg["unspliced_layer"], copy=True)
        n = u.shape[0]
        if n < 3:
            raise VelopyroInputError(
                f"adata has {n} cell(s); velopyro needs at least 3 (2 to train, BatchNorm needs 2 per minibatch, "
                "and 1 to validate): pass more cells."
            )
        check_constant_genes(s, u, list(adata.var_names), spliced_layer=cfg["spliced_layer"],
                             unspliced_layer=cfg["unspliced_layer"])
        _check_one_layer_constant(s, u, adata.var_names, cfg["spliced_layer"], cfg["unspliced_layer"])
        if lik.is_count:
            for name, x in ((cfg["spliced_layer"], s), (cfg["unspliced_layer"], u)):
                check_counts(x, name, lik.name)
            sf_u, sf_s = _size_factors(adata, u, s, cfg["size_factor_key"])
        else:
            sf_u = sf_s = np.ones(n, dtype=np.float32)
            if s.max() > 10 or u.max() > 10:
                warnings.warn(
                    "The Normal likelihood expects min-max scaled Ms/Mu in [0, 1] (seed eq. 20-21), but "
                    f"the layers reach {max(s.max(), u.max()):.3g}; run velopyro.pp.preprocess first.",
                    stacklevel=caller_stacklevel(),
                )
        data = VeloData(torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(sf_u[:, None].copy()),
                        torch.from_numpy(sf_s[:, None].copy()))
        kin = (lik.to_kinetic_scale(u, sf_u), lik.to_kinetic_scale(s, sf_s))
        return data, kin

    def _read_store(self, adata: Any, lik: Likelihood) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        """The out-of-core path: check the layers on disk and collect size factors and the per-gene
        statistics' subsample in one streamed pass (:func:`velopyro._disk.stream_inputs`)."""
        cfg = self.config
        key = cfg["size_factor_key"]
        sf = None
        if key is not None and lik.is_count:
            if key not in adata.obs:
                raise VelopyroInputError(f"size_factor_key {key!r} is not a column of adata.obs.")
            sf = np.asarray(adata.obs[key], dtype=np.float32)
            if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
                raise VelopyroInputError(f"adata.obs[{key!r}] must be positive and finite for every cell.")
        sub = _disk.stream_inputs(self.store, cfg["spliced_layer"], cfg["unspliced_layer"], adata.var_names,
                                  is_count=lik.is_count, likelihood_name=lik.name, size_factor=sf)
        if not lik.is_count and sub.max_value > 10:
            warnings.warn(
                "The Normal likelihood expects min-max scaled Ms/Mu in [0, 1] (seed eq. 20-21), but "
                f"the layers reach {sub.max_value:.3g}; run velopyro.pp.preprocess first.",
                stacklevel=caller_stacklevel(),
            )
        self._sub = sub
        return sub.data, (lik.to_kinetic_scale(sub.u, sub.size_factor_u),
                          lik.to_kinetic_scale(sub.s, sub.size_factor_s))

    def _require_memory(self, what: str) -> None:
        """Raise for read-outs that need every cell's data in memory when the model reads from disk."""
        if self.store is not None:
            raise VelopyroInputError(
                f"{what} needs the data in memory, but this model reads {self.store!r} from disk; load the "
                "AnnData into memory (anndata.read_h5ad(path)) and build the model on it, or use "
                "write_to_adata(store=...), which streams."
            )

    def _build(self, lik: Likelihood, seed: int, rate_init: str | None = None) -> None:
        """Build model and guide; call it inside :func:`velopyro._rng.seeded` (the networks' initial
        weights come from torch's global generator). ``rate_init``: the start of gamma / beta, one of
        ``RATE_STARTS`` (default: the configured one; ``"select"`` builds the constant start, which
        :meth:`fit` replaces by each candidate's)."""
        cfg = self.config
        u_k, s_k = self._kinetic  # on disk: the statistics' subsample (all cells when they fit)
        effect = None
        if self.n_categories:  # the covariate's effect starts at moment matching (velopyro.covariates)
            effect = BatchEffect(self.n_categories, self.n_genes, cfg.get("batch_effect") or "none")
            codes = self.data.batch_index.numpy()
            if self._sub is not None:
                codes = codes[self._sub.rows]
            effect.initialise(u_k, s_k, codes)
            with torch.no_grad():  # the kinetic starts (u*, s*, gamma / beta) from the batch-corrected data
                cb = torch.from_numpy(codes)
                u_k = effect.inverse(torch.as_tensor(u_k), "u", cb).numpy()
                s_k = effect.inverse(torch.as_tensor(s_k), "s", cb).numpy()
        if self._sub is None:
            lik.setup(self.data.u.numpy(), self.data.s.numpy(), self.data.size_factor_u[:, 0].numpy(),
                      self.data.size_factor_s[:, 0].numpy())
        else:
            lik.setup(self._sub.u, self._sub.s, self._sub.size_factor_u, self._sub.size_factor_s)
        u_star, s_star = switch_targets(u_k, s_k)
        extra = {}
        # gamma / beta starts at the steady-state slope (models saved before the option: constant)
        rate_init = rate_init or cfg.get("rate_init", "constant")
        if rate_init == "steady_state":
            extra["gamma_init"] = BETA_INIT * steady_state_ratio(u_k, s_k)
        family = get_guide(cfg["pi_guide"])
        self.model = VeloVIModel(
            self.n_genes, lik, u_star, s_star, n_latent=cfg["n_latent"], n_hidden=cfg["n_hidden"],
            n_layers=cfg["n_layers"], t_max=cfg["t_max"], switch_penalty=cfg["switch_penalty"],
            state_coupling=cfg["state_coupling"], seed=seed, collapse_pi=family.collapse_pi or family.pi_of_z,
            pi_of_z=family.pi_of_z,
            n_categories=self.n_categories, batch_effect=cfg.get("batch_effect") or "none",
            kinetics=cfg.get("kinetics", "constant"), **extra,
        )
        if effect is not None:
            self.model.batch_effect.load_state_dict(effect.state_dict())
        effect = self.model.batch_effect
        correction = effect.inverse if effect is not None and cfg.get("batch_encoder") == "corrected" else None
        covariates = {} if not self.n_categories else dict(n_categories=self.n_categories, batch_correction=correction)
        self.guide = family.build(n_genes=self.n_genes, n_latent=cfg["n_latent"], likelihood=lik,
                                  n_hidden=cfg["n_hidden"], n_layers=cfg["n_layers"],
                                  dropout_rate=cfg["dropout_rate"], **covariates)

    @property
    def n_categories(self) -> tuple[int, ...]:
        """Number of categories of each batch covariate (empty without ``batch_key``)."""
        cats = self.config.get("batch_categories") or {}
        return tuple(len(cats[k]) for k in self.config.get("batch_key") or [])

    def get_batch_effects(self) -> dict[str, dict[str, np.ndarray]]:
        """The fitted per-batch, gene-wise effects on the observed mean, per covariate key.

        Returns
        -------
        dict
            ``{key: {"categories": (C,) str, "scale_u": (C, G), "scale_s": ..., "offset_u": ..., ...}}``
            with the tables the design has (``scale_*`` multiplies the kinetic mean, ``offset_*`` is added;
            the first, reference, category is 1 and 0). Empty without ``batch_key``.
        """
        effect = self.model.batch_effect
        if effect is None:
            return {}
        with torch.no_grad():
            tables = {k: v.detach().cpu().numpy() for k, v in effect.effects().items()}
        out, start = {}, 0
        for key, n in zip(self.config["batch_key"], self.n_categories, strict=True):
            out[key] = {"categories": np.asarray(self.config["batch_categories"][key], dtype=str),
                        **{name: t[start:start + n] for name, t in tables.items()}}
            start += n
        return out

    @property
    def likelihood(self) -> Likelihood:
        """The observation model (a :class:`~velopyro.likelihoods.Likelihood`)."""
        return self.model.likelihood

    # ---- training ------------------------------------------------------------------------------------
    def fit(self, config: TrainConfig | None = None, **train_kwargs: Any) -> VeloPyro:
        """Fit by SVI with ``TraceEnum_ELBO`` (see :func:`velopyro.train.train_svi`).

        Networks and parameters are re-initialised from ``seed`` so the same seed gives the same fit.

        What a seed fixes: the initial weights, the train/validation split, the minibatch order and every
        Monte Carlo draw. The same seed, data, settings and software versions give the same fit on the
        same device, with any number of torch threads, up to the order of floating-point sums in torch's
        multi-threaded kernels (matrix products), which can differ between thread counts in the last
        bits and then grow over the epochs (see ``docs/reliability.md``). The caller's global
        torch, numpy and ``random`` states are left as they were. Fits and posterior queries of all
        models in one process run one at a time: a fit started in a second thread waits for the first.

        With fewer training cells than ``batch_size``, each epoch is one minibatch of all training cells
        (``history["batch_size"]`` records the size used). Ctrl-C (``KeyboardInterrupt``) after the first
        epoch ends the fit with a warning: the best state so far is kept, ``history["interrupted"]`` is
        True and the model can be queried and saved.

        Parameters
        ----------
        config
            A :class:`~velopyro.train.TrainConfig` (default: its defaults).
        **train_kwargs
            Training options replacing those of ``config``, each a field of
            :class:`~velopyro.train.TrainConfig`, where they are documented with their defaults:
            ``max_epochs`` (500), ``batch_size`` (256), ``lr``, ``weight_decay`` (1e-2 each), ``eps``,
            ``clip_norm``, ``early_stopping``, ``patience`` (45), ``min_delta``, ``kl_warmup_epochs``,
            ``penalty_fade``, ``jit``, ``device`` (``"auto"``), ``preload``, ``seed`` (0), ``progress_bar``,
            ``train_size`` (0.9) and ``validation_indices`` (cell positions held out for validation, e.g.
            to compare with another model on the same cells; overrides ``train_size``). An unknown name
            raises ``TypeError``; a value out of its type or range (``max_epochs=0``, ``lr=inf``, a negative
            ``patience``, ``early_stopping="no"``, ...) a one-line
            :class:`~velopyro._validation.VelopyroInputError` (:class:`~velopyro.train.TrainConfig`).
            Checkpoints: ``checkpoint_dir``, ``checkpoint_every``, ``resume``
            (continue an interrupted fit exactly; a checkpoint records a fingerprint of the data, the shape,
            cell and gene names and a digest of a sample of the values, and resuming on other data is
            refused). Several processes through PyTorch Lightning:
            ``accelerator``, ``devices``, ``strategy``, ``num_nodes`` (e.g. ``devices=4, strategy="ddp"``).

        Returns
        -------
        VeloPyro
            ``self``, fitted; the loss curves are in :attr:`history`.
        """
        cfg = TrainConfig.from_options(config, **train_kwargs)
        seed, validation_indices = cfg.seed, cfg.validation_indices
        checkpoint_dir, resume = cfg.checkpoint_dir, cfg.resume
        # every option was checked by TrainConfig (velopyro._validation.TRAIN_OPTION_CHECKS); the checks here
        # are those that need the data or combine options
        device_ = resolve_device(cfg.device)
        lightning = cfg.strategy is not None or _several(cfg.devices) or cfg.num_nodes > 1
        if lightning and (checkpoint_dir is not None or resume is not None):
            raise VelopyroInputError(
                f"{'resume' if resume is not None else 'checkpoint_dir'} is not available with devices/strategy "
                "(Lightning training): velopyro's checkpoints hold one process's model, guide, optimiser and "
                "random states, which several Lightning processes do not share; train in one process "
                "(no devices/strategy) to checkpoint and resume, or drop checkpoint_dir/resume."
            )
        if checkpoint_dir is not None and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
            raise VelopyroInputError(
                f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a directory; pass a directory for the "
                "checkpoints (it is created if missing)."
            )
        starts = self._rate_starts()
        # one checkpoint per start: rate_init="select" keeps each candidate's in a subdirectory named for it
        if resume is not None and checkpoint_dir is None:
            checkpoint_dir = checkpoint_path(resume).parent if len(starts) == 1 else Path(resume)
        if resume is not None and len(starts) > 1 and checkpoint_path(resume).is_file():
            self._check_checkpoint(load_checkpoint(resume), resume)  # one start's checkpoint: says which setting
        plan: dict[str, tuple[Any, Any]] = {}  # start -> (its checkpoint directory, the state to resume)
        for start in starts:
            ck_dir, ck_resume = (_start_dir(d, start, len(starts)) for d in (checkpoint_dir, resume))
            state = None
            if resume is not None and (len(starts) == 1 or checkpoint_path(ck_resume).is_file()):
                state = load_checkpoint(ck_resume)
                self._check_checkpoint(state, ck_resume)
            elif resume is None and ck_dir is not None and checkpoint_path(ck_dir).is_file():
                raise VelopyroInputError(
                    f"{str(checkpoint_dir)!r} already holds a checkpoint; pass resume={str(checkpoint_dir)!r} to "
                    "continue that fit, or choose an empty checkpoint_dir."
                )
            plan[start] = (ck_dir, state)
        if resume is not None and all(s is None for _, s in plan.values()):
            raise FileNotFoundError(f"No checkpoint in {str(resume)!r}; pass the checkpoint_dir of an earlier fit.")
        if validation_indices is None:
            self.train_indices, self.validation_indices = split_indices(self.n_cells, cfg.train_size, seed)
        else:
            val = np.unique(np.asarray(validation_indices))
            if val.size == 0 or not np.issubdtype(val.dtype, np.integer) or val[0] < 0 or val[-1] >= self.n_cells:
                raise VelopyroInputError(
                    f"validation_indices must be integer cell positions in [0, {self.n_cells}); got "
                    f"{np.asarray(validation_indices).dtype} values (pass positions, e.g. np.flatnonzero(mask))."
                )
            self.train_indices = np.setdiff1d(np.arange(self.n_cells), val)
            self.validation_indices = val
            if len(self.train_indices) < 2:
                raise VelopyroInputError("validation_indices leaves fewer than 2 training cells; hold out fewer.")
        for _, state in plan.values():
            saved = {} if state is None else state["meta"]
            if state is not None and not (np.array_equal(saved["train_indices"].numpy(), self.train_indices)
                                          and np.array_equal(saved["validation_indices"].numpy(),
                                                             self.validation_indices)):
                raise VelopyroInputError(
                    "The checkpoint's train/validation split differs from this fit's; resume with the same "
                    "seed and train_size (or validation_indices) as the interrupted fit."
                )
        self._check_reference_batches()
        meta = {"config": dict(self.config), "n_cells": self.n_cells,
                "var_names": [str(v) for v in self.adata.var_names], "fingerprint": self._fingerprint(),
                "train_indices": torch.as_tensor(self.train_indices),
                "validation_indices": torch.as_tensor(self.validation_indices)}
        if lightning and (cfg.jit or cfg.preload or cfg.loss_per_cell):
            raise VelopyroInputError(
                "jit, preload, loss_per_cell, checkpoint_dir and resume are not available with devices/strategy "
                "(Lightning training); drop them, or train in one process without devices/strategy."
            )
        # rate_init="select": one fit from each start of gamma / beta, the same seed and split, and the one
        # with the lower validation loss (-ELBO per held-out cell) is kept; a label-free choice of the side of
        # each gene's steady-state line that the data support (README, "Velocity direction")
        fits = []  # (validation loss, start, model, guide, history, per-gene evidence), in the order of starts
        for start in starts:
            with seeded(seed):
                self._build(get_likelihood(self._fresh_likelihood()), seed=seed, rate_init=start)
            self.is_trained = False
            history = (self._train_lightning(cfg, seed) if lightning
                       else self._train_one(cfg, device_, *plan[start], meta))
            evidence = self._orientation_evidence() if len(starts) > 1 else None
            fits.append((float(history.get("best_validation_loss", math.inf)), start, self.model, self.guide,
                         history, evidence))
            if history.get("interrupted"):
                break
        kept = min(fits, key=lambda f: f[0])  # the first start on a tie
        _, start, self.model, self.guide, self.history, _ = kept
        self.history["rate_init"] = start
        if len(starts) > 1:
            self.history["rate_init_candidates"] = {f[1]: {"validation_loss": f[0], "epochs": len(f[4]["epoch"])}
                                                    for f in fits}
            other = [f for f in fits if f is not kept]
            if other and kept[5] is not None and other[0][5] is not None:
                self.history["orientation"] = _orientation(kept[5], other[0][5])
        self._record_settings(cfg)
        if lightning:
            self.history["settings"].update(accelerator=self._accelerator(cfg), devices=cfg.devices,
                                            strategy=cfg.strategy, num_nodes=cfg.num_nodes)
        self.is_trained = True
        return self

    def _orientation_evidence(self, n_samples: int = 5) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-gene held-out log-likelihood per cell and spliced velocity of the validation cells, for one
        start's fit (``rate_init="select"`` compares the starts' with :func:`_orientation`)."""
        idx = self.validation_indices
        if len(idx) < 3:
            return None
        self.is_trained = True
        try:
            ll = self.get_log_likelihood(n_samples=n_samples, indices=idx, per_gene=True).mean(axis=(0, 1))
            v = self._reduce(lambda smp: {"v": posterior.velocity(smp, "mean", "spliced", posterior.VELOCITY_WEIGHTS)},
                             n_samples, posterior.QUERY_BATCH_SIZE, 0, indices=idx)["v"]
        finally:
            self.is_trained = False
        return ll, v

    def _rate_starts(self) -> tuple[str, ...]:
        """The starts of gamma / beta that :meth:`fit` trains from (``rate_init``, documented in the class)."""
        rate_init = self.config.get("rate_init", "constant")
        if rate_init == "auto":  # one fit from the constant start, the start the development suite supports best
            rate_init = "constant"
        return RATE_STARTS if rate_init == "select" else (rate_init,)

    @staticmethod
    def _accelerator(cfg: TrainConfig) -> str:
        if cfg.accelerator is not None:
            return cfg.accelerator
        return {"cpu": "cpu", "cuda": "gpu"}.get(str(cfg.device).split(":")[0], "auto")

    def _train_lightning(self, cfg: TrainConfig, seed: int) -> dict[str, Any]:
        """Train the built model and guide with PyTorch Lightning (several devices or processes)."""
        from .lightning import train_lightning

        self.device = torch.device("cpu")
        return train_lightning(
            self.model, self.guide, self.data, train_idx=self.train_indices,
            validation_idx=self.validation_indices, max_epochs=cfg.max_epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, clip_norm=cfg.clip_norm,
            early_stopping=cfg.early_stopping, patience=cfg.patience, min_delta=cfg.min_delta,
            kl_warmup_epochs=cfg.kl_warmup_epochs,
            penalty_fade=cfg.penalty_fade, seed=seed, accelerator=self._accelerator(cfg),
            devices="auto" if cfg.devices is None else cfg.devices, strategy=cfg.strategy or "auto",
            num_nodes=cfg.num_nodes, progress_bar=cfg.progress_bar,
        )

    def _train_one(self, cfg: TrainConfig, device: torch.device, checkpoint_dir: Any, state: Any,
                   meta: dict[str, Any]) -> dict[str, Any]:
        """Train the built model and guide in this process (:func:`velopyro.train.train_svi`)."""
        self.device = device
        return train_svi(
            self.model, self.guide, self.data, train_idx=self.train_indices,
            validation_idx=self.validation_indices,
            config=dataclasses.replace(cfg, device=self.device, validation_indices=None, resume=None,
                                       checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir)),
            resume_state=state, checkpoint_meta=meta,
        )

    def _record_settings(self, cfg: TrainConfig) -> None:
        train_size = cfg.train_size if cfg.validation_indices is None else len(self.train_indices) / self.n_cells
        self.history["settings"] = dict(max_epochs=cfg.max_epochs,
                                        batch_size=self.history.get("batch_size", cfg.batch_size), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, train_size=train_size, seed=cfg.seed,
                                        kl_warmup_epochs=cfg.kl_warmup_epochs, penalty_fade=cfg.penalty_fade,
                                        jit=cfg.jit)

    def _fingerprint(self) -> dict[str, Any]:
        """What identifies the fitted data in a checkpoint: the shape, digests of the cell and gene names, and
        a digest of the values of up to 64 evenly spaced cells (both layers, as the model reads them)."""
        rows = np.unique(np.round(np.linspace(0, self.n_cells - 1, min(self.n_cells, 64))).astype(np.int64))
        if self._sub is None:
            u, s = self.data.u.numpy()[rows], self.data.s.numpy()[rows]
        else:
            u, s = self.data.read(rows)
        h = hashlib.sha256()
        for x in (u, s):
            h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        return {"shape": [int(self.n_cells), int(self.n_genes)], "obs_names_sha256": _names_digest(self.obs_names),
                "var_names_sha256": _names_digest(self.var_names), "values_sha256": h.hexdigest()}

    def _check_reference_batches(self) -> None:
        """Refuse a covariate whose reference (first) category has no training cell: the kinetics are put on
        that category's scale, which the data would then not identify."""
        cats = self.config.get("batch_categories") or {}
        for j, key in enumerate(self.config.get("batch_key") or []):
            codes = self.data.batch_index[:, j].numpy()[self.train_indices]
            if not np.any(codes == 0):
                raise VelopyroInputError(
                    f"the reference category {cats[key][0]!r} of batch_key {key!r} (the first of batch_categories) "
                    "has no training cells; the rates are fitted on the reference's scale: list a category "
                    "present in adata.obs first, or drop batch_categories to read them from obs."
                )

    def _check_checkpoint(self, state: dict[str, Any], path: Any) -> None:
        """Raise unless the checkpoint was written for this data and model configuration."""
        meta = state.get("meta", {})
        if meta.get("n_cells") != self.n_cells or meta.get("var_names") != [str(v) for v in self.adata.var_names]:
            raise VelopyroInputError(
                f"The checkpoint {str(path)!r} was written for {meta.get('n_cells')} cells x "
                f"{len(meta.get('var_names', []))} genes, not this AnnData ({self.n_cells} x {self.n_genes}); "
                "resume on the data the interrupted fit used."
            )
        saved = meta.get("fingerprint")  # checkpoints written before fingerprints have none
        if saved is not None:
            now = self._fingerprint()
            what = ("cell names" if saved.get("obs_names_sha256") != now["obs_names_sha256"] else
                    "values" if saved.get("values_sha256") != now["values_sha256"] else
                    "data" if saved != now else None)
            if what is not None:
                raise VelopyroInputError(
                    f"The checkpoint {str(path)!r} was written for other data (same genes and number of cells, "
                    f"other {what}); resume on the data the interrupted fit used, or start a new fit without resume."
                )
        for key, value in meta.get("config", {}).items():
            if self.config.get(key) != value:
                raise VelopyroInputError(
                    f"The checkpoint {str(path)!r} was written with {key}={value!r} but this model has "
                    f"{key}={self.config.get(key)!r}; build VeloPyro with the interrupted fit's settings."
                )

    def _fresh_likelihood(self) -> Likelihood:
        """A new likelihood of the configured kind (a copy of a user's instance: fitting leaves it unchanged)."""
        return _fresh_likelihood(self._likelihood_arg)

    # ---- posterior queries ---------------------------------------------------------------------------
    def _check_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not fitted yet: call .fit() first (or VeloPyro.load).")

    @property
    def fitted(self) -> FittedModel:
        """The fitted pieces (model, guide, data, config, history, split) that :mod:`velopyro.ppc` and
        :mod:`velopyro.convert` work on; raises ``RuntimeError`` before :meth:`fit`."""
        self._check_trained()
        return FittedModel(model=self.model, guide=self.guide, data=self.data, config=self.config,
                           var_names=self.adata.var_names, obs_names=self.adata.obs_names, history=self.history,
                           train_indices=self.train_indices, validation_indices=self.validation_indices,
                           device=self.device)

    def _reduce(self, fn, n_samples: int, batch_size: int, seed: int | None, indices=None) -> dict[str, np.ndarray]:
        self._check_trained()
        with seeded(seed):
            return posterior.reduce_samples(fn, self.model, self.guide, self.data, n_samples=n_samples,
                                            batch_size=batch_size, device=self.device, indices=indices)

    def get_velocity(
        self,
        n_samples: int = 25,
        statistic: str = "mean",
        mode: str = "spliced",
        clip: bool = False,
        state_weights: str = posterior.VELOCITY_WEIGHTS,
        batch_size: int = 256,
        seed: int | None = 0,
        return_samples: bool = False,
    ) -> np.ndarray:
        """Posterior mean velocity per cell and gene (or every draw, ``return_samples=True``).

        Parameters
        ----------
        n_samples
            Posterior draws averaged.
        statistic
            ``"mean"`` (state-probability weighted) or ``"max"`` (most probable state).
        mode
            ``"spliced"`` (ds/dt, scVelo's velocity) or ``"unspliced"`` (du/dt).
        clip
            Clip spliced velocity at ``-s`` so one unit of time cannot take s below zero.
        state_weights
            ``"pi"`` (default: the states weighted by ``pi``, as veloVI) or ``"posterior"`` (by
            p(k | data)); see :mod:`velopyro.posterior` for the benchmark behind the default.
        batch_size
            Cells per batch.
        seed
            Seed of the draws (None: not reseeded).
        return_samples
            Return each draw instead of the mean: ``(n_samples, cells, genes)`` float32, i.e.
            ``4 n_samples cells genes`` bytes (25 draws of 3,696 x 364 cells x genes: 135 MB; 100 draws of
            100k x 2,000: 80 GB). For per-cell summaries of the draws use
            :meth:`get_directional_uncertainty`, which streams over cells instead.

        Returns
        -------
        numpy.ndarray
            ``(cells, genes)``, or ``(n_samples, cells, genes)`` with ``return_samples``.
        """
        def fn(smp):
            return {"v": posterior.velocity(smp, statistic, mode, state_weights)}

        if return_samples:
            v = self._velocity_draws(n_samples, mode, state_weights, statistic, batch_size, seed)
            if clip:
                x = (self.data.s if mode == "spliced" else self.data.u).numpy()
                v = np.maximum(v, -x[None])
            return v
        v = self._reduce(fn, n_samples, batch_size, seed)["v"]
        if clip:
            x = (self.data.s if mode == "spliced" else self.data.u).numpy()
            v = np.maximum(v, -x)
        return v

    def get_latent_time(
        self,
        n_samples: int = 25,
        statistic: str = "mean",
        level: str = "gene",
        state_weights: str = posterior.TIME_WEIGHTS,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Posterior mean latent time.

        Parameters
        ----------
        n_samples
            Posterior draws averaged.
        statistic
            ``"mean"`` or ``"max"`` over states (see :func:`velopyro.posterior.latent_time`).
        level
            ``"gene"``: per cell and gene on the model's scale ``[0, t_max]``; ``"cell"``: one value
            per cell in [0, 1], the median over genes of the gene times, min-max scaled over cells.
        state_weights
            ``"posterior"`` or ``"pi"``.
        batch_size
            Cells per batch.
        seed
            Seed of the draws.

        Returns
        -------
        numpy.ndarray
            ``(cells, genes)`` or ``(cells,)``.
        """
        t_max = self.config["t_max"]

        def fn(smp):
            return {"t": posterior.latent_time(smp, statistic, state_weights, t_max)}

        t = self._reduce(fn, n_samples, batch_size, seed)["t"]
        if level == "gene":
            return t
        if level != "cell":
            raise ValueError(f"level must be 'gene' or 'cell', got {level!r}.")
        c = np.median(t, axis=1)
        span = c.max() - c.min()
        return (c - c.min()) / span if span > 0 else np.zeros_like(c)

    def get_state_assignment(
        self,
        n_samples: int = 25,
        hard: bool = False,
        state_weights: str = posterior.TIME_WEIGHTS,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Posterior probabilities of the four states given the data, or hard labels.

        The probabilities are ``E_q[p(k | u, s, z, pi)]``: the enumerated posterior of k (eq. 15)
        averaged over q(z, pi); ``state_weights="pi"`` returns ``E_q[pi]`` instead.

        Parameters
        ----------
        n_samples
            Posterior draws averaged.
        hard
            Return the most probable state (0 induction, 1 induction steady state, 2 repression,
            3 repression steady state; see :data:`velopyro.kinetics.STATE_NAMES`).
        state_weights
            ``"posterior"`` or ``"pi"``.
        batch_size
            Cells per batch.
        seed
            Seed of the draws.

        Returns
        -------
        numpy.ndarray
            ``(cells, genes, 4)`` probabilities, or ``(cells, genes)`` int labels if ``hard``.
        """
        def fn(smp):
            return {"p": posterior.state_weights(smp, state_weights)}

        p = self._reduce(fn, n_samples, batch_size, seed)["p"]
        return p.argmax(-1) if hard else p

    def get_expression_fit(
        self,
        n_samples: int = 25,
        state_weights: str = posterior.TIME_WEIGHTS,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fitted means of unspliced and spliced: ``sum_k w_k u_bar_k`` and ``sum_k w_k s_bar_k``.

        Parameters
        ----------
        n_samples
            Posterior draws averaged.
        state_weights
            ``"posterior"`` or ``"pi"``.
        batch_size
            Cells per batch.
        seed
            Seed of the draws.

        Returns
        -------
        tuple of numpy.ndarray
            ``(fit_u, fit_s)``, each ``(cells, genes)`` on the kinetic scale.
        """
        def fn(smp):
            w = posterior.state_weights(smp, state_weights)
            return {"u": (smp["u_bar"] * w).sum(-1), "s": (smp["s_bar"] * w).sum(-1)}

        out = self._reduce(fn, n_samples, batch_size, seed)
        return out["u"], out["s"]

    def get_latent_representation(self, give_mean: bool = True, batch_size: int = 256,
                                  seed: int | None = 0) -> np.ndarray:
        """The cells' latent z: the mean of q(z | u, s), or one draw.

        Parameters
        ----------
        give_mean
            Return the posterior mean (else a sample).
        batch_size
            Cells per batch.
        seed
            Seed of the draw.

        Returns
        -------
        numpy.ndarray
            ``(cells, n_latent)``.
        """
        key = "z_loc" if give_mean else "z"
        return self._reduce(lambda smp: {"z": smp[key]}, 1, batch_size, seed)["z"]

    def get_log_likelihood(
        self,
        n_samples: int = 1,
        indices: np.ndarray | None = None,
        per_gene: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Pointwise log-likelihood with the state marginalised, per posterior draw.

        ``log sum_k pi_k p(u|k) p(s|k)`` (shared coupling) or the sum of the two mixtures of eq. 23-24
        (independent coupling), through the model's likelihood.

        Parameters
        ----------
        n_samples
            Posterior draws (one row each).
        indices
            Cells to score (all by default), e.g. :attr:`validation_indices`.
        per_gene
            Keep genes separate (``(n_samples, cells, genes)``; large) instead of summing over genes.
        batch_size
            Cells per batch.
        seed
            Seed of the draws.

        Returns
        -------
        numpy.ndarray
            ``(n_samples, cells)`` or ``(n_samples, cells, genes)``.
        """
        self._check_trained()
        rows: dict[int, list[np.ndarray]] = {}
        coupling = self.config["state_coupling"]
        with seeded(seed):
            for _, sno, smp in posterior.iterate_samples(self.model, self.guide, self.data, n_samples=n_samples,
                                                         batch_size=batch_size, device=self.device,
                                                         indices=indices):
                ll = posterior.mixture_log_likelihood(smp, coupling)
                rows.setdefault(sno, []).append((ll if per_gene else ll.sum(-1)).cpu().numpy())
        return np.stack([np.concatenate(rows[k], axis=0) for k in sorted(rows)], axis=0)

    def get_rates(self) -> dict[str, np.ndarray]:
        """Point estimates of the per-gene parameters.

        Returns
        -------
        dict of str to numpy.ndarray
            The kinetics' rates (``alpha``, ``beta``, ``gamma`` for the constant kinetics; also ``alpha_1``,
            ``lambda_alpha`` for the time-dependent one), ``t_s`` and the likelihood's parameters (``sigma_u``,
            ``sigma_s`` for the Normal), each ``(genes,)``.
        """
        with torch.no_grad():
            out = {k: v.detach().cpu().numpy() for k, v in self.model.rates().items()}
            out.update({k: v.detach().cpu().numpy() for k, v in self.likelihood.gene_params().items()})
        return out

    # ---- AnnData -------------------------------------------------------------------------------------
    def write_to_adata(self, adata: Any | None = None, n_samples: int = N_SAMPLES, copy: bool = False,
                       seed: int | None = 0, exclude_backward_genes: bool = False,
                       store: str | os.PathLike | None = None) -> Any | None:
        """Write velocity, latent time, rates and states into AnnData under scVelo's keys.

        Writes

        - ``layers["velocity"]`` (spliced velocity, ds/dt), ``layers["velocity_u"]`` (du/dt), both as
          :meth:`get_velocity` (states weighted by pi),
          ``layers["fit_t"]`` (latent time per cell and gene, model scale [0, t_max]) and
          ``layers["fit_state"]`` (most probable state, 0..3), both as :meth:`get_latent_time` /
          :meth:`get_state_assignment` (states weighted by p(k | data))
        - ``var["fit_<rate>"]`` for each of the kinetics' rates (``fit_alpha``, ``fit_beta``, ``fit_gamma`` for
          the constant kinetics), ``var["fit_t_"]`` (switch time),
          ``var["fit_scaling"]`` (1.0), ``var["velocity_genes"]`` (True), ``var["fit_sigma_u"]`` etc.
        - for scVelo's dynamical-model tools (``scv.tl.latent_time``, ``rank_dynamical_genes``):
          ``var["fit_likelihood"]`` (scVelo's gene likelihood of the standardised residuals of the
          posterior mean fit), ``var["fit_log_likelihood"]`` (the model's marginal log-likelihood per
          cell, averaged over cells), ``var["fit_std_u"]``/``["fit_std_s"]``, ``var["fit_u0"]``/
          ``["fit_s0"]`` (0: no basal transcription), ``layers["fit_tau"]``/``["fit_tau_"]`` (time on the
          induction branch; time since the switch on the repression branch) and
          ``uns["recover_dynamics"]``; see :mod:`velopyro._scvelo`
        - ``layers["velocity_var"]``: the posterior variance of the spliced velocity over the ``n_samples``
          draws (what CellRank's Monte Carlo model can sample from: :func:`velopyro.tl.cellrank_velocity_kernel`)
        - ``obs["latent_time"]`` (cell-level, [0, 1]), ``obsm["X_velopyro"]`` (mean of q(z | u, s))
        - ``var["fit_time_consistency"]``, ``var["fit_backward"]``: the backward-gene diagnostic of
          :func:`velopyro.tl.gene_time_consistency` (a gene whose own time runs against the cells' latent time)
        - ``uns["velopyro"]``: configuration, training history, layers used, state weights of each output.

        Every output comes from one pass over the cells (in batches of
        :data:`velopyro.posterior.QUERY_BATCH_SIZE`) and the draws: each batch's posterior means are written
        as soon as its draws are done, so the memory holds the outputs themselves (in memory) or one batch
        (``store``), whatever ``n_samples``; the values equal those of :meth:`get_velocity`,
        :meth:`get_latent_time` and :meth:`get_state_assignment` with the same seed and
        ``batch_size=velopyro.posterior.QUERY_BATCH_SIZE``.

        Large data: with ``store`` (or for a model that reads its data from disk) the cells x genes layers
        and ``obsm["X_velopyro"]`` are written in row chunks into an ``.h5ad`` file or zarr store, never held
        in memory; the per-gene and per-cell columns, ``uns`` entries, are written there too and also set on
        the AnnData in memory (not its layers). There ``fit_time_consistency``/``fit_backward`` are computed
        on the evenly spaced cell subsample of the per-gene statistics (every cell up to
        :data:`velopyro._disk.STAT_ENTRIES` cells x genes) and ``fit_std_u``/``fit_std_s`` on the same subsample.

        scVelo's ``scv.tl.velocity_graph`` and ``scv.pl.velocity_embedding_stream`` run on the result.

        Parameters
        ----------
        adata
            Target AnnData with the same cells and genes as the fit (default: the one the model was
            built on).
        n_samples
            Posterior draws averaged, a positive integer (checked before anything is written).
        copy
            Write into a copy and return it.
        seed
            Seed of the draws.
        exclude_backward_genes
            Set ``var["velocity_genes"]`` to False for the genes flagged backward, so that the velocity graph
            (velopyro's and scVelo's ``velocity_graph``) leaves them out.
        store
            Write into this ``.h5ad`` file or ``.zarr`` store instead of the AnnData's layers: a new path (it
            gets the fitted cells' ``obs`` and ``var``; it is written under a temporary name next to it and
            renamed when complete, so a failed write leaves no file) or an existing AnnData store with the
            fitted cells and genes (the same ``obs_names`` and ``var_names`` in the same order, checked as for
            an in-memory ``adata``), e.g. the file the model reads (:attr:`store`; its outputs of the same
            names are replaced). Required for a model on a backed AnnData (whose file AnnData holds open
            read-only).

        Returns
        -------
        AnnData or None
            The copy if ``copy`` (and no ``store``) else None.
        """
        self._check_trained()
        n_samples = check_n_samples(n_samples)
        adata = self.adata if adata is None else adata
        if adata.shape != (self.n_cells, self.n_genes):
            raise VelopyroInputError(
                f"adata has shape {adata.shape} but the model was fitted on {(self.n_cells, self.n_genes)}; "
                "pass the AnnData the model was built on (or one with the same cells and genes)."
            )
        _check_same_names(adata.var_names, self.var_names, "genes", "var_names", "adata = adata[:, model.var_names]")
        _check_same_names(adata.obs_names, self.obs_names, "cells", "obs_names", "adata = adata[model.obs_names]")
        if store is None and self.store is not None:
            if getattr(self.adata, "isbacked", False):
                raise VelopyroInputError(
                    "this model reads a backed AnnData's file, which AnnData holds open read-only; pass "
                    "store='results.h5ad' (a new .h5ad or .zarr path) to write the outputs there in chunks."
                )
            store = self.store
        if store is not None:
            self._write_store(adata, str(store), n_samples, seed, exclude_backward_genes)
            return None
        if copy:
            adata = adata.copy()
        n, g = self.n_cells, self.n_genes
        arrays = {k: np.empty((n, g), np.float32)
                  for k in ("velocity", "velocity_u", "velocity_var", "fit_t", "fit_tau", "fit_tau_")}
        arrays["fit_state"] = np.empty((n, g), np.int8)
        arrays["X_velopyro"] = np.empty((n, self.config["n_latent"]), np.float32)
        per_gene, cell_t, _ = self._write_pass(arrays, n_samples, seed, np.arange(0))
        for k in ("velocity", "velocity_u", "velocity_var", "fit_t", "fit_state"):
            adata.layers[k] = arrays[k]
        self._write_small(adata, per_gene, cell_t, n_samples)
        adata.layers["fit_tau"], adata.layers["fit_tau_"] = arrays["fit_tau"], arrays["fit_tau_"]
        adata.obsm["X_velopyro"] = arrays["X_velopyro"]
        from . import tl

        tl.gene_time_consistency(adata, exclude=exclude_backward_genes)
        adata.uns["velopyro"] = self._uns_entry(n_samples)
        return adata if copy else None

    def _write_pass(self, arrays: dict[str, Any], n_samples: int, seed: int | None,
                    keep_rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """One pass over cells and draws: write each batch's outputs into ``arrays`` (numpy arrays or store
        datasets, by row slices), accumulate the per-gene sums, keep ``fit_t``/``fit_state`` of ``keep_rows``."""
        n, g, bs = self.n_cells, self.n_genes, posterior.QUERY_BATCH_SIZE
        t_max, coupling = self.config["t_max"], self.config["state_coupling"]
        from . import _scvelo

        std_u, std_s = _scvelo.data_std(*self._kinetic)  # on disk: from the statistics' subsample
        sums = {k: np.zeros(g) for k in ("ll", "d2", "sd")}
        cell_t = np.empty(n, np.float32)
        kept = {"fit_t": np.empty((len(keep_rows), g), np.float32),
                "fit_state": np.empty((len(keep_rows), g), np.int8)}

        def fn(smp):  # the defaults of get_velocity and get_latent_time / get_state_assignment
            wv = posterior.state_weights(smp, posterior.VELOCITY_WEIGHTS)
            w = posterior.state_weights(smp, posterior.TIME_WEIGHTS)
            r = smp["rates"]  # both derivatives at once (posterior.velocity computes both for either mode)
            du, ds = smp["kinetics"].state_velocities(smp["u_bar"], smp["s_bar"], smp["t_ind"], r)
            v = (ds * wv).sum(-1)  # = posterior.velocity(smp, "mean", ...)
            return {"v": v, "v2": v * v,  # v2: the velocity's posterior variance (velocity_var)
                    "vu": (du * wv).sum(-1),
                    "t": posterior.latent_time(smp, "mean", w, t_max), "w": w, "z": smp["z_loc"],
                    # scVelo's dynamical keys: expression fit, per-branch times, marginal log-likelihood
                    "fu": (smp["u_bar"] * w).sum(-1), "fs": (smp["s_bar"] * w).sum(-1),
                    "tau": smp["t_ind"], "tau_": smp["t_rep"] - smp["rates"]["t_s"],
                    "ll": posterior.mixture_log_likelihood(smp, coupling)}

        def on_batch(bno: int, out: dict[str, np.ndarray]) -> None:
            a = bno * bs
            b = a + out["v"].shape[0]
            state = out["w"].argmax(-1).astype(np.int8)
            for key, val in (("velocity", out["v"]), ("velocity_u", out["vu"]),
                             ("velocity_var", _scvelo.velocity_variance(out["v"], out["v2"])), ("fit_t", out["t"]),
                             ("fit_state", state), ("fit_tau", out["tau"]), ("fit_tau_", out["tau_"]),
                             ("X_velopyro", out["z"])):
                arrays[key][a:b] = val
            cell_t[a:b] = np.median(out["t"], axis=1)
            uk, sk = self._kinetic_rows(a, b)
            d2, sd = _scvelo.residual_sums(uk, sk, out["fu"], out["fs"], std_u, std_s)
            sums["d2"] += d2
            sums["sd"] += sd
            sums["ll"] += out["ll"].sum(0, dtype=np.float64)
            lo, hi = np.searchsorted(keep_rows, [a, b])
            kept["fit_t"][lo:hi] = out["t"][keep_rows[lo:hi] - a]
            kept["fit_state"][lo:hi] = state[keep_rows[lo:hi] - a]

        self._check_trained()
        with seeded(seed):
            posterior.reduce_samples(fn, self.model, self.guide, self.data, n_samples=n_samples, batch_size=bs,
                                     device=self.device, on_batch=on_batch)
        per_gene = {"std_u": std_u, "std_s": std_s, "likelihood": _scvelo.fit_likelihood(sums["d2"], sums["sd"], n),
                    "log_likelihood": (sums["ll"] / n).astype(np.float32)}
        return per_gene, cell_t, kept

    def _kinetic_rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Observations of cells ``a .. b - 1`` on the kinetic scale, through the likelihood's
        :meth:`~velopyro.likelihoods.Likelihood.to_kinetic_scale` (read from disk for a backed model whose
        statistics' subsample leaves cells out, with the subsample's :meth:`kinetic_scale_stats`)."""
        sub = self._sub
        if sub is None or len(sub.rows) == self.n_cells:  # every cell's kinetic scale is in memory already
            return self._kinetic[0][a:b], self._kinetic[1][a:b]
        lik = self.likelihood
        params = inspect.signature(lik.to_kinetic_scale).parameters
        if "stats" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise VelopyroInputError(
                f"likelihood {lik.name!r}: to_kinetic_scale(x, size_factor) takes no stats, but this model reads "
                f"{self.store!r} from disk in chunks with per-gene statistics from a subsample of its cells; give "
                "the likelihood kinetic_scale_stats(x, size_factor) and to_kinetic_scale(x, size_factor, stats=None) "
                "(velopyro.likelihoods.Likelihood), or load the data into memory."
            )
        cached = getattr(self, "_kin_stats", None)
        if cached is None or cached[0] is not lik:  # once per likelihood, from the subsample (as the starting values)
            cached = self._kin_stats = (lik, lik.kinetic_scale_stats(sub.u, sub.size_factor_u),
                                        lik.kinetic_scale_stats(sub.s, sub.size_factor_s))
        u, s = self.data.read_rows(a, b)
        return (lik.to_kinetic_scale(u, self.data.size_factor_u[a:b, 0].numpy(), stats=cached[1]),
                lik.to_kinetic_scale(s, self.data.size_factor_s[a:b, 0].numpy(), stats=cached[2]))

    def _write_small(self, adata: Any, per_gene: dict[str, np.ndarray], cell_t: np.ndarray, n_samples: int) -> None:
        """The per-gene columns (rates, scVelo's keys) and ``obs["latent_time"]`` on ``adata``."""
        from . import _scvelo

        for k, v in self.get_rates().items():
            adata.var["fit_t_" if k == "t_s" else f"fit_{k}"] = v
        adata.var["fit_scaling"] = 1.0
        adata.var["velocity_genes"] = True
        adata.var["fit_likelihood"] = per_gene["likelihood"]
        adata.var["fit_log_likelihood"] = per_gene["log_likelihood"]
        adata.var["fit_std_u"], adata.var["fit_std_s"] = per_gene["std_u"], per_gene["std_s"]
        adata.var["fit_u0"] = 0.0
        adata.var["fit_s0"] = 0.0
        orientation = self.history.get("orientation") or {}
        llr = np.asarray(orientation.get("llr", np.full(self.n_genes, np.nan)), dtype=np.float64)
        agreement = np.asarray(orientation.get("agreement", np.full(self.n_genes, np.nan)), dtype=np.float64)
        adata.var["fit_orientation_llr"], adata.var["fit_orientation_agreement"] = llr, agreement
        adata.var["fit_orientation_contradicted"] = (llr < 0) & (agreement < 0)
        adata.uns["recover_dynamics"] = dict(_scvelo.RECOVER_DYNAMICS)
        span = cell_t.max() - cell_t.min()
        adata.obs["latent_time"] = (cell_t - cell_t.min()) / span if span > 0 else 0.0

    def _uns_entry(self, n_samples: int) -> dict[str, Any]:
        return {
            "config": {k: v for k, v in self.config.items() if v is not None},
            "history": {**{k: np.asarray(self.history[k]) for k in ("epoch", "train_loss", "validation_loss")},
                        **{k: self.history[k] for k in ("best_epoch", "stopped_early", "converged")
                           if k in self.history}},
            "state_names": list(kinetics.STATE_NAMES),
            "n_samples": n_samples,
            "state_weights": {"velocity": posterior.VELOCITY_WEIGHTS, "latent_time": posterior.TIME_WEIGHTS,
                              "fit_state": posterior.TIME_WEIGHTS},
        }

    def _write_store(self, adata: Any, store: str, n_samples: int, seed: int | None, exclude: bool) -> None:
        """:meth:`write_to_adata` into an ``.h5ad``/zarr store, in row chunks: a new store is written under a
        temporary name and renamed when complete; an existing one must hold the fitted cells and genes."""
        n, g = self.n_cells, self.n_genes
        if self.store is not None and not os.path.exists(self.store):
            raise VelopyroInputError(f"the data store {self.store!r} this model reads no longer exists; nothing was "
                                     "written: put the file back, or build the model again on the data.")
        new = not os.path.exists(store)
        if not new:
            from anndata.io import read_elem

            root = _disk.open_store(store)
            try:
                if not all(k in root and "_index" in root[k].attrs for k in ("obs", "var")):
                    raise VelopyroInputError(f"store {store!r} is not an AnnData store (no obs/var); pass a new path "
                                             "or the .h5ad/.zarr store of these cells.")
                names = [[str(v) for v in read_elem(root[k][root[k].attrs["_index"]])] for k in ("obs", "var")]
            finally:
                if hasattr(root, "close"):
                    root.close()
            shape = (len(names[0]), len(names[1]))
            if shape != (n, g):
                raise VelopyroInputError(
                    f"store {store!r} holds {shape[0]} cells x {shape[1]} genes, not the fitted {n} x {g}; pass a "
                    "new path or the store of these cells."
                )
            # the names as an in-memory write checks them: the same cells and genes, in the same order
            advice = ("pass a new path, or a store of the fitted cells and genes in their order, e.g. one written "
                      "from adata[model.obs_names, model.var_names].copy()")
            _check_same_names(names[1], self.var_names, "genes", "var_names", "", whose=f"store {store!r}'s",
                              advice=advice)
            _check_same_names(names[0], self.obs_names, "cells", "obs_names", "", whose=f"store {store!r}'s",
                              advice=advice)
        same_file = self.store is not None and os.path.abspath(store) == os.path.abspath(self.store)
        if same_file:
            self.data.close()
        target, store = store, _temporary_name(store) if new else store  # a new store appears only when complete
        try:
            self._write_store_into(adata, store, same_file, n_samples, seed, exclude)
            if new:
                os.replace(store, target)
        except BaseException as err:
            if new:
                if os.path.isdir(store):
                    shutil.rmtree(store, ignore_errors=True)
                else:
                    Path(store).unlink(missing_ok=True)
            if isinstance(err, Exception) and self.store is not None and not os.path.exists(self.store):
                raise VelopyroInputError(
                    f"the data store {self.store!r} this model reads disappeared during the write "
                    f"({type(err).__name__}); " + (f"nothing was written to {target!r}" if new else
                                                   f"{target!r} holds partial outputs") +
                    ": put the file back and write again."
                ) from err
            raise

    def _write_store_into(self, adata: Any, store: str, same_file: bool, n_samples: int, seed: int | None,
                          exclude: bool) -> None:
        import anndata

        from . import tl

        n, g, bs = self.n_cells, self.n_genes, posterior.QUERY_BATCH_SIZE
        writer = _disk.StoreWriter(store, obs=adata.obs, var=adata.var)
        try:
            if same_file and not writer.zarr:  # read the inputs through the writable handle
                self.data._handle = (os.getpid(), writer.root)
            arrays = {k: writer.create(f"layers/{k}", (n, g), np.float32, bs)
                      for k in ("velocity", "velocity_u", "velocity_var", "fit_t", "fit_tau", "fit_tau_")}
            arrays["fit_state"] = writer.create("layers/fit_state", (n, g), np.int8, bs)
            arrays["X_velopyro"] = writer.create("obsm/X_velopyro", (n, self.config["n_latent"]), np.float32, 4096)
            keep = self._sub.rows if self._sub is not None else _disk.stat_rows(n, g)
            per_gene, cell_t, kept = self._write_pass(arrays, n_samples, seed, keep)
            self._write_small(adata, per_gene, cell_t, n_samples)
            sub = anndata.AnnData(obs={"latent_time": np.asarray(adata.obs["latent_time"])[keep]},
                                  var={"velocity_genes": np.ones(g, bool), "fit_orientation_contradicted":
                                       np.asarray(adata.var["fit_orientation_contradicted"])}, layers=kept)
            tl.gene_time_consistency(sub, exclude=exclude)
            for k in ("fit_time_consistency", "fit_backward", "velocity_genes"):
                adata.var[k] = np.asarray(sub.var[k])
            adata.uns["velopyro"] = self._uns_entry(n_samples)
            writer.write_elem("var", adata.var)
            writer.write_elem("obs", adata.obs)
            writer.write_elem("uns/velopyro", adata.uns["velopyro"])
            writer.write_elem("uns/recover_dynamics", adata.uns["recover_dynamics"])
        finally:
            writer.close()
            if same_file:
                self.data._handle = None

    # ---- uncertainty (veloVI's read-outs; velopyro.uncertainty) -----------------------------------------
    def _velocity_draws(self, n_samples: int, mode: str, state_weights: str, statistic: str, batch_size: int,
                        seed: int | None) -> np.ndarray:
        self._check_trained()
        n_samples = check_n_samples(n_samples)
        out = np.empty((n_samples, self.n_cells, self.n_genes), dtype=np.float32)
        with seeded(seed):
            for _, sno, smp in posterior.iterate_samples(self.model, self.guide, self.data, n_samples=n_samples,
                                                         batch_size=batch_size, device=self.device):
                v = posterior.velocity(smp, statistic, mode, state_weights)
                out[sno, smp["idx"].cpu().numpy()] = v.cpu().numpy()
        return out

    def get_directional_uncertainty(
        self,
        n_samples: int = 50,
        extrinsic: bool = False,
        n_extrinsic_samples: int = 25,
        write: bool = True,
        batch_size: int = 256,
        seed: int | None = 0,
        state_weights: str = posterior.UNCERTAINTY_WEIGHTS,
    ) -> Any:
        """veloVI's intrinsic (and optionally extrinsic) directional uncertainty per cell.

        Intrinsic: the spread over posterior draws of the cosine similarity between each draw's velocity
        and the mean velocity (Gayoso et al. 2024), streamed over batches of cells: memory is
        ``n_samples x batch_size x genes``, never draws x cells x genes. Extrinsic: the same statistics
        of the displacement to the extrapolated future state through each draw's velocity graph
        (needs ``obsp["connectivities"]``; two passes of ``n_extrinsic_samples`` draws, cells x genes
        memory). See :mod:`velopyro.uncertainty` for the definitions and keys.

        Parameters
        ----------
        n_samples
            Posterior draws for the intrinsic statistics (veloVI: 50).
        extrinsic
            Also compute the extrinsic statistics (``<key>_extrinsic``).
        n_extrinsic_samples
            Draws for the extrinsic statistics (each builds a velocity graph).
        write
            Write the columns into ``obs`` of the model's AnnData (after everything is computed).
        batch_size
            Cells per batch.
        seed
            Seed of the draws.
        state_weights
            How each draw's velocity weighs the four states: ``"posterior"`` (default: by the state's
            posterior given the cell's data, p(k | u, s, z, pi)) or ``"pi"`` (by the draw of pi, as
            :meth:`get_velocity`'s default). The data posterior is the default because only it flags
            cells whose data hold no direction: on simulated data with one cell type held at steady
            state, ``directional_cosine_sim_variance`` ranks those cells above the rest with ROC AUC
            0.98 ± 0.02 with ``"posterior"`` and 0.36 ± 0.13 with ``"pi"`` (5 seeds), whose Dirichlet draws
            mix induction and repression in every cell (``docs/uncertainty.md``).

        Returns
        -------
        pandas.DataFrame
            Cells x statistics (``directional_cosine_sim_variance``, ``..._difference``, ``..._mean``,
            ``directional_variance``, ``directional_difference``; with ``_extrinsic`` copies).
        """
        import pandas as pd

        from . import uncertainty

        self._check_trained()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
            raise VelopyroInputError(f"n_samples must be >= 2 (an integer) to measure a spread, got {n_samples!r}")
        cols = {k: np.zeros(self.n_cells) for k in uncertainty.STAT_NAMES}
        with seeded(seed):
            for idx, draws in uncertainty.velocity_draws_by_batch(self, n_samples, state_weights=state_weights,
                                                                  batch_size=batch_size):
                for k, v in uncertainty.directional_statistics(draws).items():
                    cols[k][idx] = v
        if extrinsic:
            cols.update({f"{k}_extrinsic": v for k, v in self._extrinsic(n_extrinsic_samples, batch_size,
                                                                          seed, state_weights).items()})
        df = pd.DataFrame(cols, index=self.adata.obs_names)
        if write:
            for k in df.columns:
                self.adata.obs[k] = df[k].to_numpy(np.float32)
        return df

    def _extrinsic(self, n_draws: int, batch_size: int, seed: int | None,
                   state_weights: str) -> dict[str, np.ndarray]:
        import anndata as ad

        from . import tl, uncertainty

        self._require_memory("extrinsic uncertainty (n_extrinsic_samples)")
        if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 2:
            raise VelopyroInputError(f"n_extrinsic_samples must be >= 2 (an integer), got {n_draws!r}")
        if "connectivities" not in self.adata.obsp:
            raise VelopyroInputError("extrinsic uncertainty needs obsp['connectivities']; run velopyro.pp.preprocess "
                                     "(or scanpy.pp.neighbors) first")
        x = np.asarray(self._kinetic[1])  # spliced on the kinetic scale (the data themselves for the Normal)
        base = 0 if seed is None else int(seed)

        def displacement(l: int) -> np.ndarray:
            v = self.get_velocity(n_samples=1, state_weights=state_weights, batch_size=batch_size,
                                  seed=base + 1000 + l)
            tmp = ad.AnnData(obs=self.adata.obs[[]].copy(), var=self.adata.var[[]].copy(),
                             layers={"Ms": x, "velocity": v})
            tmp.obsp["connectivities"] = self.adata.obsp["connectivities"]
            tl.velocity_graph(tmp)
            p = tl.transition_matrix(tmp, self_transitions=True)
            return np.asarray(p @ x) - x

        # two passes over the same seeded draws: the mean, then each draw's cosine to it (cells x genes memory)
        mean = sum(displacement(i) for i in range(n_draws)) / n_draws
        xc = mean - mean.mean(1, keepdims=True)
        cos = np.zeros((n_draws, self.n_cells))
        for i in range(n_draws):
            d = displacement(i)
            d = d - d.mean(1, keepdims=True)
            den = np.linalg.norm(d, axis=1) * np.linalg.norm(xc, axis=1)
            cos[i] = np.divide((d * xc).sum(1), den, out=np.zeros(self.n_cells), where=den > 0)
        return uncertainty.statistics_from_cosines(np.clip(cos, -1.0, 1.0))

    def get_permutation_scores(
        self,
        labels_key: str,
        n_samples: int = 10,
        write: bool = True,
        batch_size: int = 256,
        seed: int = 0,
        max_cells: int | None = None,
    ) -> Any:
        """veloVI's permutation score: per gene and cell type, how much better the fit is on the real data
        than on the type's cells with u and s permuted (a t-statistic; see :mod:`velopyro.uncertainty`).

        Streamed by cell type: memory is one type's cells x genes. The model is not refitted.

        Parameters
        ----------
        labels_key
            ``obs`` column of cell types.
        n_samples
            Posterior draws averaged for the fitted means (veloVI: 10).
        write
            Write ``varm["permutation_scores"]`` (genes x types) and ``uns["permutation_scores"]``
            (``labels_key``, ``cell_types``, ``max_cells``: -1 for all) into the model's AnnData.
        batch_size
            Cells per batch.
        seed
            Seed of the permutations (a local generator) and of the draws.
        max_cells
            Score at most this many cells of each type (a random subset, drawn from ``seed``, of the larger
            types; None: every cell). The t-statistic grows with the square root of the cells scored, so
            types of different sizes compare on an equal footing only below a common cap; veloVI scores
            the first 200 cells of each type.

        Returns
        -------
        pandas.DataFrame
            Genes x cell types.
        """
        from . import uncertainty

        self._check_trained()
        self._require_memory("get_permutation_scores")
        if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer))
                                      or max_cells < 2):
            raise VelopyroInputError(f"max_cells must be an integer >= 2 or None, got {max_cells!r}")
        df = uncertainty.permutation_scores(self, self.adata, labels_key, n_samples=n_samples,
                                            batch_size=batch_size, seed=seed, max_cells=max_cells)
        if write:
            self.adata.varm["permutation_scores"] = df.to_numpy(np.float32)
            self.adata.uns["permutation_scores"] = {"labels_key": labels_key,
                                                    "cell_types": [str(c) for c in df.columns],
                                                    "max_cells": -1 if max_cells is None else int(max_cells)}
        return df

    def get_velocity_interval(
        self,
        level: float = 0.9,
        n_samples: int = 100,
        mode: str = "spliced",
        write: bool = True,
        batch_size: int = 256,
        seed: int | None = 0,
        state_weights: str = posterior.VELOCITY_WEIGHTS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Equal-tailed posterior interval of each cell's velocity, streamed over cells.

        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles over ``n_samples`` posterior draws of the
        velocity (eq. 2 at each draw's time and state weights, as :meth:`get_velocity`), computed one batch
        of cells at a time (memory ``n_samples x batch_size x genes``). The interval reflects the
        variational posterior of z and pi (eq. 22); the rates are point estimates (see
        :mod:`velopyro.uncertainty` for what that means for coverage).

        Parameters
        ----------
        level
            Nominal probability of the interval, in (0, 1).
        n_samples
            Posterior draws per cell.
        mode
            ``"spliced"`` (ds/dt) or ``"unspliced"`` (du/dt).
        write
            Write ``layers["velocity_lower"]``, ``layers["velocity_upper"]`` (``velocity_u_lower`` /
            ``_upper`` for ``mode="unspliced"``) and ``uns["velocity_interval"]`` (``level``,
            ``n_samples``, ``mode``, ``state_weights``) into the model's AnnData (what
            :func:`velopyro.pl.velocity_interval` draws).
        batch_size
            Cells per batch.
        seed
            Seed of the draws (None: not reseeded).
        state_weights
            How each draw weighs the four states: ``"pi"`` (default, as :meth:`get_velocity`) or
            ``"posterior"`` (by p(k | data), as :meth:`get_directional_uncertainty`).

        Returns
        -------
        tuple of numpy.ndarray
            ``(lower, upper)``, each cells x genes.
        """
        from . import uncertainty

        self._check_trained()
        if not 0.0 < float(level) < 1.0:
            raise VelopyroInputError(f"level must lie strictly between 0 and 1 (e.g. 0.9), got {level}")
        if mode not in ("spliced", "unspliced"):
            raise VelopyroInputError(f"mode must be 'spliced' or 'unspliced', got {mode!r}")
        with seeded(seed):
            lo, hi = uncertainty.velocity_quantiles(self, [(1 - level) / 2, (1 + level) / 2], n_samples=n_samples,
                                                    mode=mode, state_weights=state_weights, batch_size=batch_size)
        if write:
            key = "velocity" if mode == "spliced" else "velocity_u"
            self.adata.layers[f"{key}_lower"] = lo
            self.adata.layers[f"{key}_upper"] = hi
            self.adata.uns["velocity_interval"] = {"level": float(level), "n_samples": int(n_samples), "mode": mode,
                                                   "state_weights": state_weights}
        return lo, hi

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Save the fitted model (parameters, configuration, history, split) to a directory.

        ``model.pt`` holds tensors only (the state dicts and the split), ``config.json`` the rest, so
        :meth:`load` never unpickles Python objects. The directory is written under a temporary name next
        to ``path`` and renamed into place when complete: an error or a full disk leaves no partial
        directory, and with ``overwrite`` the previous model stays until the new one is complete.

        Each swappable component (likelihood, state coupling, guide; :data:`velopyro._registry.COMPONENTS`) is
        recorded by its registered name in ``config.json`` and its parameters in the state dicts, so a custom
        component registered under its name is restored by :meth:`load` in a session that registers it too.

        Parameters
        ----------
        path
            Directory to create (a new or empty directory).
        overwrite
            Replace an existing model directory (one that holds only ``model.pt`` and ``config.json``).
        """
        self._check_trained()
        p = Path(path)
        if p.is_symlink():
            raise FileExistsError(f"{p} is a symbolic link; refusing to replace it: pass the directory itself "
                                  f"({os.path.realpath(p)}) or a new directory name.")
        if p.exists() and not p.is_dir():
            raise FileExistsError(f"{p} exists and is not a directory; choose a new directory name.")
        entries = sorted(e.name for e in p.iterdir()) if p.is_dir() else []
        if entries and not overwrite:
            raise FileExistsError(f"{p} exists and is not empty; pass overwrite=True to replace it.")
        if set(entries) - {_MODEL_FILE, _CONFIG_FILE}:
            raise FileExistsError(f"{p} holds files other than a velopyro model ({format_names(entries)}); "
                                  "refusing to replace it: choose a new directory.")
        if LIKELIHOODS.get(self.likelihood.name) is not type(self.likelihood):
            warnings.warn(f"The likelihood {self.likelihood.name!r} is not registered under its name; it is saved by "
                          "its parameters only: register its class (velopyro.likelihoods.register_likelihood) or "
                          "pass the same instance to VeloPyro.load(..., likelihood=...).",
                          stacklevel=caller_stacklevel())
        state = {"model": self.model.state_dict(), "guide": self.guide.state_dict(),
                 "train_indices": torch.as_tensor(np.asarray(self.train_indices, dtype=np.int64)),
                 "validation_indices": torch.as_tensor(np.asarray(self.validation_indices, dtype=np.int64))}
        meta = {"format": _FORMAT, "config": self.config, "history": self.history, "n_cells": self.n_cells,
                "n_genes": self.n_genes, "var_names": self.var_names.tolist(),
                "obs_names_sha256": _names_digest(self.obs_names), "version": _version()}
        text = json.dumps(meta, default=_json_default)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.tmp-", dir=p.parent))
        old: Path | None = None
        try:
            torch.save(state, tmp / _MODEL_FILE)
            (tmp / _CONFIG_FILE).write_text(text)
            if entries:  # keep the previous model until the new one is complete
                old = Path(tempfile.mkdtemp(prefix=f".{p.name}.old-", dir=p.parent))
                os.replace(p, old)
            elif p.exists():
                p.rmdir()  # an empty directory
            os.replace(tmp, p)
        except BaseException:
            if old is not None and not p.exists():
                os.replace(old, p)
                old = None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, adata: Any, likelihood: Likelihood | None = None,
             device: str = "cpu") -> VeloPyro:
        """Load a model saved by :meth:`save` onto ``adata`` (same genes, in the same order).

        ``model.pt`` is read with ``torch.load(weights_only=True)``: a file that holds anything but
        tensors (e.g. a pickled object that would run code), a truncated or corrupt file, or an unreadable
        ``config.json`` raises :class:`~velopyro._validation.VelopyroInputError` and runs nothing, as does a
        component name (likelihood, state coupling, guide) that this session has not registered. Every field
        of ``config.json`` goes through the constructor's checks (:data:`velopyro._validation.MODEL_OPTION_CHECKS`)
        before anything is built: an unknown ``format``, ``t_max <= 0``, ``n_latent < 1``, ``n_hidden`` above
        65536, an unknown option, ... are refused in one line.

        The genes must be the saved model's, in the same order. The cells may differ (the guide is
        amortised, so the loaded model answers queries for any cells): with the fitted cells (same
        ``obs_names`` in the same order) the saved train/validation split is restored; with other cells
        it does not apply, a warning says so and :attr:`train_indices` and :attr:`validation_indices`
        are empty.

        Parameters
        ----------
        path
            Directory written by :meth:`save`.
        adata
            AnnData with the layers named in the saved configuration.
        likelihood
            The instance, for a custom likelihood class.
        device
            Where to put the model.

        Returns
        -------
        VeloPyro
            The fitted model; its outputs equal the saved model's exactly.
        """
        p = Path(path)
        meta, state = _read_saved(p)
        cfg = meta["config"]
        var_names = (_disk.read_frame(_disk.store_path(adata), "var").index
                     if isinstance(adata, (str, os.PathLike)) else adata.var_names)
        if [str(v) for v in var_names] != meta["var_names"]:
            raise VelopyroInputError(
                f"adata's genes differ from the saved model's ({meta['n_genes']} genes); pass the AnnData the "
                "model was fitted on, subset to the same genes in the same order."
            )
        # every component by its registered name (likelihood, state coupling, guide, kinetics, ...): refuse unknown
        # ones (models saved before kinetics objects have no "kinetics": constant)
        check_registered(cfg, f"the model saved in {str(p)!r}", skip=("likelihood",) if likelihood is not None else ())
        kwargs = {k: v for k, v in cfg.items() if k not in ("spliced_layer", "unspliced_layer", "likelihood")
                  and not (k in ("batch_effect", "batch_encoder") and v is None)}  # covariates: the saved categories
        obj = cls(adata, cfg["spliced_layer"], cfg["unspliced_layer"],
                  likelihood=likelihood if likelihood is not None else cfg["likelihood"], **kwargs)
        try:
            obj.model.load_state_dict(state["model"])
            obj.guide.load_state_dict(state["guide"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise VelopyroInputError(f"{p / _MODEL_FILE} does not match its config.json ({_first_line(err)}); "
                                     "the directory is damaged: save the model again.") from err
        same_cells = meta.get("obs_names_sha256") == _names_digest(obj.obs_names)
        if same_cells:
            obj.train_indices = state["train_indices"].numpy().astype(np.int64)
            obj.validation_indices = state["validation_indices"].numpy().astype(np.int64)
        else:
            warnings.warn(f"adata's cells ({obj.n_cells}) are not the fitted cells ({meta['n_cells']}); the "
                          "saved train/validation split does not apply and is dropped (train_indices and "
                          "validation_indices are empty).", UserWarning, stacklevel=caller_stacklevel())
            obj.train_indices, obj.validation_indices = np.arange(0), np.arange(0)
        obj.history = meta["history"]
        obj.device = resolve_device(device)
        obj.model.to(obj.device).eval()
        obj.guide.to(obj.device).eval()
        obj.is_trained = True
        return obj

    def __repr__(self) -> str:
        c = self.config
        status = "fitted" if self.is_trained else "not fitted"
        return (f"VeloPyro({self.n_cells} cells x {self.n_genes} genes, likelihood={c['likelihood']!r}, "
                f"state_coupling={c['state_coupling']!r}, pi_guide={c['pi_guide']!r}; {status})")

    # ---- posterior predictive and ArviZ (thin wrappers of velopyro.ppc / velopyro.convert) -----------
    def to_arviz(self, n_samples: int = 100, per_gene_log_likelihood: bool = False, **kwargs: Any) -> Any:
        """ArviZ ``InferenceData`` of the fit; see :func:`velopyro.convert.to_arviz` for all arguments."""
        from .convert import to_arviz

        return to_arviz(self, n_samples=n_samples, per_gene_log_likelihood=per_gene_log_likelihood, **kwargs)

    def posterior_predictive(self, n_samples: int = 100, **kwargs: Any) -> dict[str, dict[str, np.ndarray]]:
        """Replicated u and s (summaries or draws); see :func:`velopyro.ppc.posterior_predictive`."""
        from .ppc import posterior_predictive

        return posterior_predictive(self, n_samples=n_samples, **kwargs)

    def pit(self, n_samples: int = 100, **kwargs: Any) -> np.ndarray:
        """PIT of each observation, cells x genes; see :func:`velopyro.ppc.pit`."""
        from .ppc import pit

        return pit(self, n_samples=n_samples, **kwargs)


def _orientation(kept: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, list]:
    """How strongly each gene's held-out data prefer the kept start's fit over the other start's.

    ``llr``: held-out log-likelihood per cell of the kept fit minus the other's (positive: the gene's own data
    agree with the choice made for all genes); ``agreement``: Pearson correlation over the held-out cells of
    the two fits' spliced velocity (negative: the two starts read the gene in opposite directions).
    """
    (ll_a, v_a), (ll_b, v_b) = kept, other
    a, b = v_a - v_a.mean(0), v_b - v_b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    agreement = np.divide((a * b).sum(0), den, out=np.full(den.shape, np.nan), where=den > 0)
    return {"llr": [float(x) for x in ll_a - ll_b], "agreement": [float(x) for x in agreement]}


def _start_dir(path: Any, start: str, n_starts: int) -> Any:
    """The checkpoint directory of one start of gamma / beta: ``path`` itself for a single start, else its
    subdirectory named for the start (``rate_init="select"``)."""
    return path if path is None or n_starts == 1 else Path(path) / start


def _several(devices: Any) -> bool:
    """Whether a Lightning ``devices`` value asks for more than one device."""
    if devices is None:
        return False
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str):
        return devices == "auto" or devices == "-1" or "," in devices or (devices.isdigit() and int(devices) > 1)
    return int(devices) > 1 or int(devices) == -1


def _default_layers(adata: Any, lik: Likelihood, spliced: str | None, unspliced: str | None,
                    has_layers: bool = False) -> tuple[str, str]:
    if spliced is not None and unspliced is not None:
        return spliced, unspliced
    if not lik.is_count:
        return spliced or "Ms", unspliced or "Mu"
    layers = adata if has_layers else getattr(adata, "layers", {})
    if "raw_spliced" in layers and "raw_unspliced" in layers:
        return spliced or "raw_spliced", unspliced or "raw_unspliced"
    return spliced or "spliced", unspliced or "unspliced"


def _size_factors(adata: Any, u: np.ndarray, s: np.ndarray, key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell size factors: an obs column, or each modality's total over the genes / its median."""
    if key is not None:
        if key not in adata.obs:
            raise VelopyroInputError(f"size_factor_key {key!r} is not a column of adata.obs.")
        sf = np.asarray(adata.obs[key], dtype=np.float32)
        if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
            raise VelopyroInputError(f"adata.obs[{key!r}] must be positive and finite for every cell.")
        return sf, sf
    out = []
    for name, x in (("unspliced", u), ("spliced", s)):
        tot = x.sum(1)
        if np.any(tot <= 0):
            raise VelopyroInputError(
                f"{int((tot <= 0).sum())} cell(s) have no {name} counts over the model's genes; filter them "
                "(e.g. scanpy.pp.filter_cells(adata, min_counts=1)) or pass size_factor_key."
            )
        out.append((tot / np.median(tot)).astype(np.float32))
    return out[0], out[1]


def _check_one_layer_constant(s: np.ndarray, u: np.ndarray, var_names: Any, s_layer: str, u_layer: str) -> None:
    """Raise for genes constant in exactly one layer (both-constant genes are caught before): the model's
    noise scale of that layer collapses towards 0 and distorts the rest of the fit."""
    from ._validation import find_constant_genes

    genes = find_constant_genes(s, u, list(var_names), either=True)
    if genes:
        raise VelopyroInputError(
            f"{len(genes)} gene(s) are constant across all cells in {s_layer!r} or in {u_layer!r} "
            f"({format_names(genes)}); the model cannot fit them: drop them, e.g. "
            "adata = adata[:, ~adata.var_names.isin(genes)].copy() (velopyro.pp.preprocess drops them)."
        )


def _temporary_name(path: str) -> str:
    """A fresh hidden name next to ``path`` with the same suffix (``.zarr`` stays a zarr store)."""
    import uuid

    p = Path(path)
    return str(p.with_name(f".{p.stem}.tmp-{uuid.uuid4().hex[:8]}{p.suffix}"))


def _check_same_names(names: Any, fitted: np.ndarray, what: str, attr: str, fix: str, whose: str = "adata's",
                      advice: str | None = None) -> None:
    """Raise unless ``names`` equal the fitted ``names`` in the same order."""
    names = np.asarray(names, dtype=str)
    if np.array_equal(names, fitted):
        return
    if len(names) == len(fitted) and set(names) == set(fitted):
        problem = f"the same {what} in another order"
    else:
        problem = f"{int(np.sum(~np.isin(names, fitted)))} {what} the fit does not have"
    if advice is None:
        advice = f"pass the AnnData the model was fitted on, or reorder it: {fix}.copy()"
    raise VelopyroInputError(f"{whose} {attr} differ from the fitted data's ({problem}); {advice}.")


def _names_digest(names: np.ndarray) -> str:
    """SHA-256 of the names in order (identifies the fitted cells without storing them)."""
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode("utf-8") + b"\0")
    return h.hexdigest()


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _torch_load_reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to load with ``weights_only=False``
    (which would run any code the file holds)."""
    from .checkpoint import torch_load_reason

    return torch_load_reason(err)


def _read_saved(p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``model.pt`` of a saved model, checked; never unpickles Python objects."""
    for name in (_CONFIG_FILE, _MODEL_FILE):
        if not (p / name).is_file():
            raise VelopyroInputError(f"{p} is not a velopyro model directory ({name} is missing); pass the "
                                     "directory written by VeloPyro.save.")
    try:
        meta = json.loads((p / _CONFIG_FILE).read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) \
                or not isinstance(meta.get("var_names"), list) or not isinstance(meta.get("history"), dict):
            raise ValueError("missing or malformed 'config', 'var_names' or 'history'")
    except (ValueError, UnicodeDecodeError) as err:
        raise VelopyroInputError(f"{p / _CONFIG_FILE} is not a valid velopyro configuration "
                                 f"({_first_line(err)}); the directory is damaged: save the model again.") from err
    _check_saved_meta(p, meta)
    try:
        state = torch.load(p / _MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated zip, not a torch file, ...
        raise VelopyroInputError(
            f"{p / _MODEL_FILE} cannot be loaded as tensors only ({_torch_load_reason(err)}); it is damaged, comes "
            "from velopyro 0.1 (numpy arrays inside) or holds other Python objects, which velopyro refuses "
            "to unpickle: save the model again with this version."
        ) from err
    keys = ("model", "guide", "train_indices", "validation_indices")
    if not isinstance(state, dict) or any(k not in state for k in keys) \
            or not all(torch.is_tensor(state[k]) for k in keys[2:]):
        raise VelopyroInputError(f"{p / _MODEL_FILE} does not hold a velopyro model ({', '.join(keys)}); "
                                 "pass the directory written by VeloPyro.save.")
    return meta, state


def _check_saved_meta(p: Path, meta: dict[str, Any]) -> None:
    """Every field of a saved ``config.json`` through the checks of the constructor's options (one table,
    :data:`velopyro._validation.MODEL_OPTION_CHECKS`), before anything is built from it."""
    where = p / _CONFIG_FILE
    fmt = meta.get("format")
    if fmt != _FORMAT:
        raise VelopyroInputError(f"{where} has format {fmt!r}, which this velopyro version does not read (it reads "
                                 f"format {_FORMAT}); save the model again with this version.")
    try:
        n_genes = meta.get("n_genes")
        if not isinstance(meta.get("n_cells"), int) or not isinstance(n_genes, int) or n_genes < 1 \
                or isinstance(n_genes, bool) or meta["n_cells"] < 1:
            raise VelopyroInputError("n_cells and n_genes must be positive integers")
        if len(meta["var_names"]) != n_genes or not all(isinstance(v, str) for v in meta["var_names"]):
            raise VelopyroInputError(f"var_names must be {n_genes} gene names")
        check_model_options(meta["config"])
    except VelopyroInputError as err:
        raise VelopyroInputError(f"{where} holds an invalid setting ({str(err).rstrip('.')}); the directory is "
                                 "damaged or was edited: save the model again.") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _version() -> str:
    from . import __version__

    return __version__
