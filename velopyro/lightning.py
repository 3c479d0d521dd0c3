"""Data-parallel training through PyTorch Lightning (optional: ``pip install 'velopyro[scale]'``).

The pattern of Pyro's ``examples/svi_lightning.py``: a ``LightningModule`` around the ELBO module
``TraceEnum_ELBO(max_plate_nesting=2)(model, guide)`` (the switch penalty is the model's ``pyro.factor``,
eq. 25-27) and a torch optimiser; Lightning's strategy (``"ddp"``, ``"ddp_spawn"``, ...) runs one
process per device and averages the gradients. The minibatches are passed to the model explicitly with the
size of the cells plate (the number of training cells N), so each process scales its B/P cells by
N / (B/P) and the averaged gradient is that of the global batch of B cells (eq. 13-21: the ELBO is a
sum over cells).

The cells are split by ``torch.utils.data.DistributedSampler``: in epoch e it permutes the training cells
with the seed ``seed + e`` (the same permutation in every process) and process r takes every P-th cell
from position r, so the global batch k is the k-th block of B cells of that permutation, whatever the
number of processes P. With P = 1 the same code is single-process training on the same global batches.

The validation ELBO per cell is summed over the processes' cells and divided by their number (Lightning's
``strategy.reduce``), logged as ``validation_loss`` with ``sync_dist=True``, and drives Lightning's
``EarlyStopping`` callback (after the KL warm-up, as in :func:`velopyro.train.train_svi`). The best state by
validation loss is restored at the end, and the history comes back to the calling process with the weights
(also under ``"ddp_spawn"``).

What differs from one process with the same global batches: BatchNorm normalises each process's B/P cells
by their own statistics (``SyncBatchNorm`` needs a GPU), and each process draws its own Monte Carlo noise
and dropout masks (seeded ``seed + rank``).
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ._validation import VelopyroInputError
from .data import VeloData
from .train import _adamw, _parameter_groups

__all__ = ["lightning_available", "train_lightning", "VeloLightningModule"]

try:  # the optional [scale] extra
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping
except ImportError:  # pragma: no cover - exercised only without the extra
    pl = None
    EarlyStopping = object

_HISTORY_KEYS = ("epoch", "train_loss", "validation_loss", "seconds", "kl_weight")


def lightning_available() -> bool:
    """Whether PyTorch Lightning (``lightning>=2.4``, the ``[scale]`` extra) is installed.

    Returns
    -------
    bool
        True when ``lightning.pytorch`` imports.
    """
    return pl is not None


class _Cells(Dataset):
    """The cell indices of a split, one per item (the data stay in :class:`~velopyro.data.VeloData`)."""

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.idx[i]


class _WarmEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` that starts counting once the KL warm-up is over (as ``train_svi``)."""

    def __init__(self, warmup_epochs: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmup_epochs = warmup_epochs or 0

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102 - Lightning hook
        if trainer.current_epoch + 1 < self.warmup_epochs:
            return
        super().on_validation_end(trainer, pl_module)


_Base = pl.LightningModule if pl is not None else torch.nn.Module


class VeloLightningModule(_Base):
    """The ELBO of model and guide as a ``LightningModule`` (one per process).

    Parameters
    ----------
    model, guide
        :class:`~velopyro.model.VeloVIModel` and :class:`~velopyro.guide.VeloVIGuide`.
    data
        Inputs on the host.
    train_idx, validation_idx
        Cell indices of the split (validation must not be empty).
    batch_size
        Cells per minibatch in each process (the global batch divided by the number of processes).
    lr, weight_decay, eps
        AdamW settings, as :func:`velopyro.train.train_svi`.
    kl_warmup_epochs, penalty_fade, min_delta
        As :func:`velopyro.train.train_svi`.
    seed
        Process r seeds Pyro's draws with ``seed + r``; the sampler permutes with ``seed + epoch``.
    """

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, data: VeloData, *, train_idx: np.ndarray,
                 validation_idx: np.ndarray, batch_size: int, lr: float, weight_decay: float, eps: float,
                 kl_warmup_epochs: int | None, penalty_fade: bool, min_delta: float, seed: int) -> None:
        super().__init__()
        self.loss_fn = TraceEnum_ELBO(max_plate_nesting=2)(model, guide)  # an ELBOModule holding both
        self._val_elbo = TraceEnum_ELBO(max_plate_nesting=2)
        self.data = data
        self.train_idx, self.validation_idx = np.asarray(train_idx), np.asarray(validation_idx)
        self.n_train = len(self.train_idx)
        self.batch_size = batch_size
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.kl_warmup_epochs, self.penalty_fade, self.min_delta, self.seed = (kl_warmup_epochs, penalty_fade,
                                                                              min_delta, seed)
        self.history: dict[str, list] = {k: [] for k in _HISTORY_KEYS}
        self.best, self.best_epoch, self.best_state, self.stopped_early = math.inf, 0, None, False

    @property
    def model(self) -> torch.nn.Module:
        """The Pyro model."""
        return self.loss_fn.model

    @property
    def guide(self) -> torch.nn.Module:
        """The Pyro guide."""
        return self.loss_fn.guide

    def _weights(self) -> tuple[float, float]:
        epoch = self.current_epoch + 1
        w = min(1.0, epoch / self.kl_warmup_epochs) if self.kl_warmup_epochs else 1.0
        return w, (1.0 - w if self.penalty_fade else 1.0)

    # ---- Lightning hooks -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:  # noqa: D102 - Lightning hook
        launcher = getattr(self.trainer.strategy, "launcher", None)
        if getattr(launcher, "_start_method", None) == "fork" and torch.get_num_threads() > 1:
            # a forked process inherits the parent's OpenMP thread pool in a broken state (libgomp is not
            # fork-safe): its first multi-threaded matrix product waits forever on threads that do not exist
            # there; one intra-op thread per forked process never enters that pool
            torch.set_num_threads(1)
        pyro.set_rng_seed(self.seed + self.global_rank)

    def train_dataloader(self) -> DataLoader:  # noqa: D102 - Lightning hook
        cells = _Cells(self.train_idx)
        sampler = DistributedSampler(cells, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=True, seed=self.seed)
        # every process has the same number of cells; BatchNorm needs 2 in a minibatch, as train_svi
        last = sampler.num_samples % self.batch_size
        return DataLoader(cells, batch_size=self.batch_size, sampler=sampler, drop_last=last == 1)

    def val_dataloader(self) -> DataLoader:  # noqa: D102 - Lightning hook
        cells = _Cells(self.validation_idx)
        sampler = DistributedSampler(cells, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(cells, batch_size=1024, sampler=sampler)

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102 - Lightning hook
        return _adamw(_parameter_groups(self.model, self.guide, self.weight_decay), lr=self.lr, eps=self.eps)

    def on_train_epoch_start(self) -> None:  # noqa: D102 - Lightning hook
        self._t0 = time.perf_counter()
        self._train_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._train_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102 - Lightning hook
        w, pen = self._weights()
        args = self.data.batch(idx.cpu(), self.device)
        kl_w, pen_w = torch.tensor(w, device=self.device), torch.tensor(pen, device=self.device)
        # the plate's full size is the number of training cells over all processes
        loss = self.loss_fn(*args, kl_w, pen_w, n_cells=self.n_train)
        self._train_sum += loss.detach().double() * len(idx) / self.n_train
        self._train_count += len(idx)
        return loss

    def on_validation_epoch_start(self) -> None:  # noqa: D102 - Lightning hook
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:  # noqa: D102 - Lightning hook
        one, zero = torch.ones((), device=self.device), torch.zeros((), device=self.device)
        args = self.data.batch(idx.cpu(), self.device)
        # negative ELBO of these cells without the switch penalty (as velopyro.train.elbo_per_cell)
        self._val_sum += float(self._val_elbo.loss(self.model, self.guide, *args, one, zero, n_cells=len(idx)))
        self._val_count += len(idx)

    def on_validation_epoch_end(self) -> None:  # noqa: D102 - Lightning hook
        strategy = self.trainer.strategy
        val = strategy.reduce(self._val_sum, reduce_op="sum") / strategy.reduce(self._val_count, reduce_op="sum")
        self.log("validation_loss", val.float(), sync_dist=True)
        self._last_val = float(val)
        w, _ = self._weights()
        if w >= 1.0 and self._last_val < self.best - self.min_delta:
            self.best, self.best_epoch = self._last_val, self.current_epoch + 1
            self.best_state = tuple({k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                                    for m in (self.model, self.guide))

    def on_train_epoch_end(self) -> None:  # noqa: D102 - Lightning hook
        strategy = self.trainer.strategy
        train = strategy.reduce(self._train_sum, reduce_op="sum") / strategy.reduce(self._train_count,
                                                                                     reduce_op="sum")
        train = float(train)  # per cell: the mean over all processes' cells of loss / n_train, as train_svi
        w, _ = self._weights()
        for key, value in zip(_HISTORY_KEYS, (self.current_epoch + 1, train, self._last_val,
                                              time.perf_counter() - self._t0, w), strict=True):
            self.history[key].append(value)
        self.log("train_loss", train, sync_dist=True)

    def on_train_end(self) -> None:  # noqa: D102 - Lightning hook
        es = self.trainer.early_stopping_callback
        self.stopped_early = bool(es is not None and es.stopped_epoch > 0)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state[0])
            self.guide.load_state_dict(self.best_state[1])

    # the history travels with the weights to the calling process (Lightning's "ddp_spawn" sends rank 0's
    # state_dict back); plain lists and numbers, so it loads with weights_only=True
    def get_extra_state(self) -> dict[str, Any]:  # noqa: D102 - torch.nn.Module hook
        return {"history": {k: list(v) for k, v in self.history.items()}, "best_epoch": int(self.best_epoch),
                "stopped_early": bool(self.stopped_early)}

    def set_extra_state(self, state: dict[str, Any]) -> None:  # noqa: D102 - torch.nn.Module hook
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best_epoch, self.stopped_early = int(state["best_epoch"]), bool(state["stopped_early"])


def train_lightning(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    *,
    train_idx: np.ndarray,
    validation_idx: np.ndarray,
    max_epochs: int = 500,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    eps: float = 0.01,
    clip_norm: float = 10.0,
    early_stopping: bool = True,
    patience: int = 45,
    min_delta: float = 0.0,
    kl_warmup_epochs: int | None = None,
    penalty_fade: bool = False,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress_bar: bool = True,
) -> dict[str, list]:
    """Fit model and guide by SVI in one or more processes with a Lightning ``Trainer``.

    Parameters
    ----------
    model, guide
        :class:`~velopyro.model.VeloVIModel` and :class:`~velopyro.guide.VeloVIGuide` (updated in place).
    data
        Inputs on the host.
    train_idx, validation_idx
        Cell indices of the split; validation must not be empty (it drives early stopping).
    max_epochs, batch_size, lr, weight_decay, eps, clip_norm, early_stopping, patience, min_delta,
    kl_warmup_epochs, penalty_fade
        As :func:`velopyro.train.train_svi`; ``batch_size`` is the global batch, split evenly over the
        processes (it must be divisible by their number).
    seed
        Seed of the cell permutations (``seed + epoch``) and of each process's draws (``seed + rank``).
    accelerator, devices, strategy, num_nodes
        Passed to ``lightning.pytorch.Trainer`` (e.g. ``"cpu"``, ``2``, ``"ddp_spawn"``; ``"gpu"``, ``4``,
        ``"ddp"``).
    progress_bar
        Lightning's progress bar.

    Returns
    -------
    dict of str to list
        As :func:`velopyro.train.train_svi`: ``epoch``, ``train_loss``, ``validation_loss``, ``seconds``,
        ``kl_weight``, ``best_epoch``, ``stopped_early``.
    """
    if pl is None:
        raise VelopyroInputError("Training on several devices needs PyTorch Lightning; install it with "
                                 "pip install 'velopyro[scale]' (lightning>=2.4).")
    if len(validation_idx) == 0:
        raise VelopyroInputError("Training through Lightning needs validation cells for early stopping and the "
                                 "best state; use train_size < 1 (e.g. 0.9).")
    callbacks = []
    if early_stopping:
        callbacks.append(_WarmEarlyStopping(kl_warmup_epochs, monitor="validation_loss", mode="min",
                                            patience=patience, min_delta=min_delta, check_on_train_epoch_end=False))
    with tempfile.TemporaryDirectory(prefix="velopyro-lightning-") as root:
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
            max_epochs=max_epochs, gradient_clip_val=clip_norm, gradient_clip_algorithm="norm",
            callbacks=callbacks, logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress_bar, num_sanity_val_steps=0, use_distributed_sampler=False,
            default_root_dir=root,
        )
        world = trainer.world_size
        if batch_size % world:
            raise VelopyroInputError(f"batch_size={batch_size} is not divisible by the {world} processes; pass a "
                                     f"multiple of {world} (each process takes batch_size / {world} cells).")
        if len(train_idx) < 2 * world:
            raise VelopyroInputError(f"{len(train_idx)} training cells are too few for {world} processes.")
        module = VeloLightningModule(
            model, guide, data, train_idx=train_idx, validation_idx=validation_idx, batch_size=batch_size // world,
            lr=lr, weight_decay=weight_decay, eps=eps, kl_warmup_epochs=kl_warmup_epochs, penalty_fade=penalty_fade,
            min_delta=min_delta, seed=seed,
        )
        trainer.fit(module)
    model.cpu().eval()
    guide.cpu().eval()
    out: dict[str, Any] = {k: list(module.history[k]) for k in _HISTORY_KEYS}
    out["best_epoch"] = module.best_epoch
    out["stopped_early"] = module.stopped_early
    out["best_validation_loss"] = float(module.best)
    if getattr(guide, "state_head", None) is not None:  # as velopyro.train.train_svi does, in this process
        from .train import fit_state_head

        out["state_head"] = fit_state_head(model, guide, data, train_idx, validation_idx, torch.device("cpu"),
                                           seed=seed, batch_size=batch_size)
    return out

