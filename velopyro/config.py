"""The library's options and their defaults, declared once as plain data (no torch, no source parsing).

- :class:`TrainConfig`: every training option (:mod:`velopyro.train` re-exports it; ``VeloPyro.fit`` and
  :func:`~velopyro.train.train_svi` take its fields);
- :class:`ModelConfig`: every model option of :class:`VeloPyro <velopyro.api.VeloPyro>`, whose constructor's
  defaults are :data:`MODEL_DEFAULTS`; :attr:`VeloPyro.config <velopyro.api.VeloPyro.config>` (the resolved
  values, which ``config.json``, checkpoints and ``adata.uns["velopyro"]["config"]`` hold) is its ``asdict``;
- :data:`N_SAMPLES`: the posterior draws of ``write_to_adata``;
- :data:`BATCH_EFFECTS` / :data:`BATCH_ENCODERS`: the covariates' choices (:mod:`velopyro.covariates`
  re-exports them).

The command line reads them from here (:func:`library_defaults`), so ``velopyro fit --help`` imports neither
torch nor pyro.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "ModelConfig", "MODEL_DEFAULTS", "N_SAMPLES", "BATCH_EFFECTS", "BATCH_ENCODERS",
           "library_defaults"]

#: Observation-model designs: ``"none"`` puts the covariate in the encoder only.
BATCH_EFFECTS = ("auto", "scale_offset", "scale", "none")
#: What the encoder sees: observations corrected by the fitted effect (and the codes), or the codes alone.
BATCH_ENCODERS = ("corrected", "onehot")

#: The default number of posterior draws of :meth:`VeloPyro.write_to_adata <velopyro.api.VeloPyro.write_to_adata>`.
N_SAMPLES = 25


@dataclass(frozen=True)
class ModelConfig:
    """Every model option of :class:`VeloPyro <velopyro.api.VeloPyro>` with its default (documented there).

    Plain data, not checked here: the constructor checks every option
    (:data:`velopyro._validation.MODEL_OPTION_CHECKS`) and stores the resolved values (the layers used,
    the likelihood's and kinetics' registered names, ``batch_effect`` for the likelihood, ...) as
    ``asdict(ModelConfig(...))`` in :attr:`VeloPyro.config <velopyro.api.VeloPyro.config>`.
    """

    spliced_layer: str | None = None
    unspliced_layer: str | None = None
    likelihood: Any = "normal"  # a registered name or a velopyro.likelihoods.Likelihood
    state_coupling: str = "independent"
    pi_guide: str = "dirichlet"
    n_latent: int = 10
    n_hidden: int = 256
    n_layers: int = 1
    dropout_rate: float = 0.1
    t_max: float = 20.0
    switch_penalty: float = 0.2
    size_factor_key: str | None = None
    rate_init: str = "auto"
    batch_key: Any = None  # str | list[str] | None
    batch_effect: str | None = "auto"
    batch_categories: dict[str, list[str]] | None = None
    batch_encoder: str | None = "corrected"
    kinetics: Any = "constant"  # a registered name or a velopyro.kinetics.Kinetics subclass


#: The defaults of :class:`VeloPyro <velopyro.api.VeloPyro>`'s model options (its constructor's defaults), by name.
MODEL_DEFAULTS: MappingProxyType[str, Any] = MappingProxyType(asdict(ModelConfig()))


@dataclass(frozen=True)
class TrainConfig:
    """Every training option of velopyro with its default: the one place they are declared.

    :func:`train_svi` and :meth:`VeloPyro.fit <velopyro.api.VeloPyro.fit>` take these as keyword arguments
    (or a ``TrainConfig``); the command line reads its defaults from here. Every field is checked when the
    configuration is made (:data:`velopyro._validation.TRAIN_OPTION_CHECKS`, one check per field): a value
    of the wrong type or out of range (``max_epochs=0``, ``lr=inf``, ``eps=0``, a negative ``patience``,
    ``min_delta``, ``clip_norm``, ``weight_decay`` or ``kl_warmup_epochs``, ``early_stopping="no"``,
    ``devices=0``, ...) raises a one-line :class:`~velopyro._validation.VelopyroInputError`.

    Attributes
    ----------
    max_epochs
        Upper bound on epochs (500).
    batch_size
        Cells per minibatch (256).
    lr, weight_decay
        AdamW learning rate and weight decay of the network weights (1e-2 each; kinetic and likelihood
        ``raw_*`` parameters are not decayed).
    eps
        AdamW epsilon (0.01).
    clip_norm
        Global gradient-norm clipping (10).
    early_stopping, patience, min_delta
        Stop when the validation loss has not improved by ``min_delta`` (0) for ``patience`` (45) epochs;
        the best state is kept either way.
    kl_warmup_epochs
        If set (a non-negative integer; 0 or None: no warm-up), the z site is scaled by
        ``w = min(1, epoch / kl_warmup_epochs)`` (``poutine.scale``).
    penalty_fade
        Multiply the switch penalty by ``1 - w`` (the reference's schedule; needs ``kl_warmup_epochs``).
    jit
        Use ``JitTraceEnum_ELBO`` (static shapes: the ragged last minibatch is dropped).
    device
        ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"`` (CUDA when available).
    preload
        Move all data to the device once instead of per minibatch (only when it fits in device memory).
    seed
        Seed of initialisation, split, minibatch order and Monte Carlo draws (0).
    progress_bar
        Show a tqdm bar with the epoch and losses.
    train_size
        Fraction of cells for training; the rest give the validation loss (0.9). Used by
        :meth:`VeloPyro.fit <velopyro.api.VeloPyro.fit>`, which makes the split.
    validation_indices
        Integer positions of the cells to hold out for validation; overrides ``train_size``. Used by
        :meth:`VeloPyro.fit <velopyro.api.VeloPyro.fit>`.
    loss_per_cell
        Optimise the negative ELBO per training cell (divided by N) instead of the total. The optimum is the
        same; what changes is what AdamW's ``eps`` and the clipping ``clip_norm`` act on. Per cell, as in the
        reference implementation, ``eps = 0.01`` damps the steps of parameters whose gradient is small
        (rates of genes the data say little about) and the gradient norm is rarely clipped; on the total
        (N times larger gradients) ``eps`` is negligible and clipping acts on nearly every step.
    checkpoint_dir, checkpoint_every
        Save the whole training state (parameters, optimiser, random states, early stopping, history) to
        ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` (1) epochs, atomically.
    resume
        A ``checkpoint_dir`` (or its ``checkpoint.pt``) of an earlier fit on the same data: continue it exactly
        where it stopped. Pass the same settings as that fit (``max_epochs`` may differ). Used by
        :meth:`VeloPyro.fit <velopyro.api.VeloPyro.fit>`.
    accelerator, devices, strategy, num_nodes
        Data-parallel training through PyTorch Lightning (``pip install 'velopyro[scale]'``;
        :mod:`velopyro.lightning`), used when ``devices`` is more than one, a ``strategy`` is given or
        ``num_nodes > 1``; ``batch_size`` is then the global minibatch. Used by
        :meth:`VeloPyro.fit <velopyro.api.VeloPyro.fit>`.
    """

    max_epochs: int = 500
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-2
    eps: float = 0.01
    clip_norm: float = 10.0
    early_stopping: bool = True
    patience: int = 45
    min_delta: float = 0.0
    kl_warmup_epochs: int | None = None
    penalty_fade: bool = False
    jit: bool = False
    device: str | torch.device = "auto"
    preload: bool = False
    seed: int = 0
    progress_bar: bool = True
    train_size: float = 0.9
    validation_indices: Any | None = None
    loss_per_cell: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: str | None = None
    accelerator: str | None = None
    devices: int | str | list[int] | None = None
    strategy: str | None = None
    num_nodes: int = 1

    def __post_init__(self) -> None:
        # every field is checked by the one table of velopyro._validation (a field without a check fails here)
        from ._validation import check_train_options

        check_train_options({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_options(cls, config: TrainConfig | None = None, **options: Any) -> TrainConfig:
        """``config`` (default: all defaults) with ``options`` replacing its fields.

        Parameters
        ----------
        config
            A starting configuration.
        **options
            Field values, by name.

        Returns
        -------
        TrainConfig
            The configuration.

        Raises
        ------
        TypeError
            For a name that is not a training option (the message lists the valid ones).
    VelopyroInputError
        For a value out of its option's type or range (every field is checked on construction by
        :data:`velopyro._validation.TRAIN_OPTION_CHECKS`).
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"unknown training option(s) {', '.join(map(repr, unknown))}; the options are "
                            f"{', '.join(names)} (see velopyro.train.TrainConfig).")
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config must be a velopyro.train.TrainConfig, got {type(config).__name__}.")
        base = asdict(config) if config is not None else {}
        return cls(**{**base, **options})


def library_defaults() -> dict[str, Any]:
    """Every training option's default (:class:`TrainConfig`), every model option's (:data:`MODEL_DEFAULTS`)
    and ``write_to_adata``'s ``n_samples`` (:data:`N_SAMPLES`), by name.

    Returns
    -------
    dict
        ``{option: default}``.
    """
    out: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}
    out.update(MODEL_DEFAULTS)
    out["n_samples"] = N_SAMPLES
    return out
