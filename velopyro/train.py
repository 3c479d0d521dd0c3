"""Stochastic variational inference for velopyro: minibatches, validation, early stopping, devices.

The objective is the (negative) ELBO of ``TraceEnum_ELBO(max_plate_nesting=2)`` (the state k enumerated
out; ``JitTraceEnum_ELBO`` with ``jit=True``) plus the switch penalty, which the model adds as a
``pyro.factor`` (eq. 25-27). Its gradient drives a torch AdamW optimiser with global gradient-norm
clipping, the pattern of Pyro's ``examples/svi_torch.py``: the parameters live in the model's and the
guide's ``nn.Module``s rather than Pyro's global parameter store, so several models can be fitted in
one session and saved with ``state_dict``.

Memory does not grow with the number of cells: the data stay on the host and each minibatch is moved to
the device when it is used (``preload=True`` moves everything once when it fits).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from ._rng import seeded
from ._warn import caller_stacklevel
from .config import TrainConfig  # declared without torch (the command line reads it); re-exported here

if TYPE_CHECKING:
    from .data import VeloData

__all__ = ["TrainConfig", "TrainingDivergedError", "resolve_device", "train_svi", "split_indices",
           "elbo_per_cell", "fit_state_head"]


def __getattr__(name: str) -> Any:
    """``VeloData``, which moved to :mod:`velopyro.data` (kept here, deprecated)."""
    if name == "VeloData":
        from .data import VeloData

        warnings.warn("velopyro.train.VeloData is deprecated; import it from velopyro.data.", DeprecationWarning,
                      stacklevel=2)
        return VeloData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TrainingDivergedError(RuntimeError):
    """Raised when the loss becomes NaN or infinite during training."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:1"``) into a ``torch.device``.

    Parameters
    ----------
    device
        The request; ``"auto"`` picks CUDA when available.

    Returns
    -------
    torch.device
        The device.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device torch knows; use 'cpu', 'cuda', 'cuda:N' or "
                         "'auto'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA device; use device='cpu' or 'auto'.")
    return dev


def split_indices(n_cells: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of cell indices.

    Parameters
    ----------
    n_cells
        N.
    train_size
        Fraction of cells for training (the rest validate); 1.0 means no validation.
    seed
        Seed of the permutation.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted train and validation indices.
    """
    if not 0.0 < train_size <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    perm = np.random.default_rng(seed).permutation(n_cells)
    n_train = n_cells if train_size >= 1.0 else max(1, int(round(train_size * n_cells)))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


@dataclass
class _History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)


def elbo_per_cell(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    idx: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
    elbo: TraceEnum_ELBO | None = None,
) -> float:
    """Negative ELBO per cell (no switch penalty, no KL warm-up) over the cells ``idx``, in eval mode.

    Parameters
    ----------
    model, guide
        The Pyro model and guide modules.
    data
        Inputs on the host.
    idx
        Cell indices to score.
    device
        Where to compute.
    batch_size
        Cells per pass.
    elbo
        The ELBO object (a fresh ``TraceEnum_ELBO`` if None).

    Returns
    -------
    float
        ``-ELBO / len(idx)``; a single Monte Carlo draw of z and pi per cell.
    """
    elbo = elbo or TraceEnum_ELBO(max_plate_nesting=2)
    was_training = model.training
    model.eval()
    guide.eval()
    total = 0.0
    one = torch.ones((), device=device)
    zero = torch.zeros((), device=device)
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            b = torch.as_tensor(idx[start:start + batch_size])
            args = data.batch(b, device)
            total += float(elbo.loss(model, guide, *args, one, zero, n_cells=len(b)))
    model.train(was_training)
    guide.train(was_training)
    return total / max(len(idx), 1)


def _parameter_groups(model: torch.nn.Module, guide: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on network weights only; kinetic rates and likelihood parameters are not decayed
    (decoupled decay would pull their unconstrained values, and so the rates, towards arbitrary points)."""
    decay, no_decay, seen = [], [], set()
    for module in (model, guide):
        for name, p in module.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if name.startswith("raw_") or ".raw_" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict], lr: float, eps: float) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel where the device supports it (same update, one pass per step)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, eps=eps)


def train_svi(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    *,
    train_idx: np.ndarray,
    validation_idx: np.ndarray,
    config: TrainConfig | None = None,
    resume_state: dict | None = None,
    checkpoint_meta: dict | None = None,
    **options: Any,
) -> dict[str, list]:
    """Fit model and guide by SVI with ``TraceEnum_ELBO``; the best state (by validation loss) is kept.

    Parameters
    ----------
    model, guide
        :class:`~velopyro.model.VeloVIModel` and :class:`~velopyro.guide.VeloVIGuide`.
    data
        Inputs on the host.
    train_idx, validation_idx
        Cell indices of the split (validation may be empty: then the training loss decides).
    config
        Training options (default: :class:`TrainConfig`'s defaults); its ``train_size`` and
        ``validation_indices`` are not used here (the split is given).
    **options
        Fields of :class:`TrainConfig` replacing those of ``config`` (``max_epochs``, ``batch_size``, ``lr``,
        ``weight_decay``, ``eps``, ``clip_norm``, ``early_stopping``, ``patience``, ``min_delta``,
        ``kl_warmup_epochs``, ``penalty_fade``, ``jit``, ``device``, ``preload``, ``seed`` (seeds torch,
        numpy and Pyro: the minibatch order and all Monte Carlo draws, for the duration of the fit; the
        caller's global random states are restored afterwards, :func:`velopyro._rng.seeded`), ``progress_bar``).
        ``checkpoint_dir`` and ``checkpoint_every`` save the training state to
        ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` epochs and at the last epoch
        (:mod:`velopyro.checkpoint`); ``resume`` and the Lightning fields are handled by the caller.
    resume_state
        A checkpoint from :func:`velopyro.checkpoint.load_checkpoint`: continue that fit exactly where it
        stopped (the settings that change the updates must be the saved ones).
    checkpoint_meta
        Stored in each checkpoint as given (the caller's description of the data and model).

    Returns
    -------
    dict of str to list
        ``epoch``, ``train_loss``, ``validation_loss`` (negative ELBO per cell), ``seconds`` (wall time
        per epoch), ``kl_weight``; also ``best_epoch``, ``stopped_early``, ``batch_size`` (the one used:
        ``min(batch_size, len(train_idx))``) and ``interrupted`` (True when a ``KeyboardInterrupt`` ended
        the fit after at least one epoch: the best state so far is kept and no exception is raised).
    """
    cfg = TrainConfig.from_options(config, **options)
    with seeded(cfg.seed):
        return _train_svi(model, guide, data, train_idx, validation_idx, cfg, resume_state, checkpoint_meta)


def _train_svi(model: torch.nn.Module, guide: torch.nn.Module, data: VeloData, train_idx: np.ndarray,
               validation_idx: np.ndarray, cfg: TrainConfig, resume_state: dict | None,
               checkpoint_meta: dict | None) -> dict[str, Any]:
    """The body of :func:`train_svi`, run with the global generators seeded."""
    max_epochs, batch_size, lr, weight_decay, eps, clip_norm = (cfg.max_epochs, cfg.batch_size, cfg.lr,
                                                                cfg.weight_decay, cfg.eps, cfg.clip_norm)
    early_stopping, patience, min_delta = cfg.early_stopping, cfg.patience, cfg.min_delta
    kl_warmup_epochs, penalty_fade, jit = cfg.kl_warmup_epochs, cfg.penalty_fade, cfg.jit
    device, preload, seed, progress_bar = cfg.device, cfg.preload, cfg.seed, cfg.progress_bar
    checkpoint_dir = None if cfg.checkpoint_dir is None else str(cfg.checkpoint_dir)
    checkpoint_every = cfg.checkpoint_every
    if penalty_fade and not kl_warmup_epochs:
        raise ValueError("penalty_fade=True fades the penalty with the KL warm-up; set kl_warmup_epochs too.")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev)
    guide.to(dev)
    host = data.to(dev) if preload else data
    n_train = len(train_idx)
    if n_train < 2:
        raise ValueError(f"Only {n_train} training cells; velopyro needs at least 2 (BatchNorm).")
    batch_size = min(batch_size, n_train)
    elbo = (JitTraceEnum_ELBO(max_plate_nesting=2, ignore_jit_warnings=True) if jit
            else TraceEnum_ELBO(max_plate_nesting=2))
    val_elbo = TraceEnum_ELBO(max_plate_nesting=2)
    if jit:
        tag = f"velopyro_{id(model)}"
        model._pyro_name, guide._pyro_name = f"{tag}_model", f"{tag}_guide"
    optim = _adamw(_parameter_groups(model, guide, weight_decay), lr=lr, eps=eps)
    params = [p for g in optim.param_groups for p in g["params"]]
    train_t = torch.as_tensor(train_idx)
    hist = _History()
    best, best_state, best_epoch, bad_epochs, stopped = math.inf, None, 0, 0, False
    settings = dict(loss_per_cell=cfg.loss_per_cell,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, eps=eps, clip_norm=clip_norm,
                    early_stopping=early_stopping, patience=patience, min_delta=min_delta,
                    kl_warmup_epochs=kl_warmup_epochs, penalty_fade=penalty_fade, jit=jit, seed=seed)
    last_epoch = 0
    if resume_state is not None:  # after seeding: the saved random states replace the seeded ones
        last_epoch, h, es = ckpt.restore_training(resume_state, model, guide, optim, gen, settings)
        hist = _History(**h)
        best, best_state, best_epoch, bad_epochs, stopped = (es["best"], es["best_state"], es["best_epoch"],
                                                             es["bad_epochs"], es["stopped"])
    bar = tqdm(range(last_epoch + 1, max_epochs + 1) if not stopped else [], desc="velopyro", unit="epoch",
               disable=not progress_bar, dynamic_ncols=True, leave=True)
    last_state, interrupted = None, False
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            w = min(1.0, epoch / kl_warmup_epochs) if kl_warmup_epochs else 1.0
            kl_w = torch.tensor(w, device=dev)
            pen_w = torch.tensor(1.0 - w if penalty_fade else 1.0, device=dev)
            model.train()
            guide.train()
            order = host.shuffle(train_t, gen)  # in memory: a uniform permutation; on disk: in blocks
            total, seen = 0.0, 0
            for start in range(0, n_train, batch_size):
                b = order[start:start + batch_size]
                if len(b) < 2 or (jit and len(b) < batch_size):
                    continue  # BatchNorm needs 2 cells; JIT needs static shapes
                args = host.batch(b, dev)
                # distribution arguments are validated on the first step only: it costs ~7% per step
                advice = (f"Likely causes: a learning rate too high for this data (try lr={lr / 10:g}), unscaled "
                          "or extreme input values (Ms/Mu should be min-max scaled to [0, 1]; run "
                          "velopyro.pp.preprocess), or genes with no variation. No results were written.")
                try:
                    with pyro.validation_enabled(epoch == 1 and start == 0):
                        loss = elbo.differentiable_loss(model, guide, *args, kl_w, pen_w, n_cells=n_train)
                except ValueError as err:  # a distribution's argument check found NaN/inf
                    if "invalid values" not in str(err) and "nan" not in str(err).lower():
                        raise
                    raise TrainingDivergedError(
                        f"A distribution received NaN or infinite parameters at epoch {epoch}. {advice}"
                    ) from err
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"The loss became {loss.item()} at epoch {epoch}. {advice}")
                optim.zero_grad(set_to_none=True)
                (loss / n_train if cfg.loss_per_cell else loss).backward()
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
                optim.step()
                total += loss.item() * len(b) / n_train
                seen += len(b)
            train_loss = total / max(seen, 1)
            val_loss = (elbo_per_cell(model, guide, host, validation_idx, dev, elbo=val_elbo)
                        if len(validation_idx) else train_loss)
            if not math.isfinite(val_loss):
                raise TrainingDivergedError(
                    f"The validation loss became {val_loss} at epoch {epoch}; lower lr (now {lr:g}) or check "
                    "the input for extreme values."
                )
            hist.epoch.append(epoch)
            hist.train_loss.append(train_loss)
            hist.validation_loss.append(val_loss)
            hist.seconds.append(time.perf_counter() - t0)
            hist.kl_weight.append(w)
            bar.set_postfix(train=f"{train_loss:.1f}", validation=f"{val_loss:.1f}")
            # early stopping on the full ELBO only once the warm-up is over
            if w >= 1.0 and val_loss < best - min_delta:
                best, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict()))
            elif w >= 1.0:
                bad_epochs += 1
                stopped = early_stopping and bad_epochs >= patience
            if best_state is None:  # still warming up: an interrupt keeps the last complete epoch
                last_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict()))
            if checkpoint_dir is not None and (epoch % checkpoint_every == 0 or stopped or epoch == max_epochs):
                es = dict(best=best, best_state=best_state, best_epoch=best_epoch, bad_epochs=bad_epochs,
                          stopped=stopped)
                ckpt.save_checkpoint(checkpoint_dir, ckpt.training_state(
                    epoch, model, guide, optim, gen, vars(hist), es, settings, checkpoint_meta))
            if stopped:
                break
    except KeyboardInterrupt:
        if not hist.epoch:
            raise  # nothing complete to keep
        interrupted = True
        keep = best_epoch if best_state is not None else hist.epoch[-1]
        warnings.warn(f"fit interrupted during epoch {len(hist.epoch) + 1}; keeping the state of epoch {keep} "
                      "(history['interrupted'] is True).", UserWarning, stacklevel=caller_stacklevel())
    finally:
        bar.close()
        model._pyro_name = guide._pyro_name = None
    state = best_state if best_state is not None else last_state if interrupted else None
    if state is not None:
        model.load_state_dict(state[0])
        guide.load_state_dict(state[1])
    model.eval()
    guide.eval()
    out = {k: list(v) for k, v in vars(hist).items()}
    if getattr(guide, "state_head", None) is not None and (best_state is not None or interrupted):
        # pi integrated out: the read-out of pi as a function of z, fitted to the kept state (not in the ELBO)
        out["state_head"] = fit_state_head(model, guide, host, train_idx, validation_idx, dev, seed=seed,
                                           batch_size=batch_size)
    out["best_epoch"] = best_epoch
    out["best_validation_loss"] = float(best)  # inf until the KL weight reaches 1 (no best state yet)
    out["stopped_early"] = stopped
    out["interrupted"] = interrupted
    out["batch_size"] = batch_size
    out["converged"] = (stopped or not early_stopping) and not interrupted
    if early_stopping and not stopped and not interrupted and hist.epoch and hist.epoch[-1] >= max_epochs:
        warnings.warn(
            f"training reached max_epochs={max_epochs} before early stopping (the validation loss was "
            f"still improving: best epoch {best_epoch}); the fit may not have converged. Raise max_epochs "
            "(e.g. fit(max_epochs=1000)) for a converged fit.",
            UserWarning, stacklevel=caller_stacklevel(),
        )
    return out


def fit_state_head(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VeloData,
    train_idx: np.ndarray,
    validation_idx: np.ndarray,
    device: torch.device,
    *,
    seed: int = 0,
    batch_size: int = 256,
    max_epochs: int = 40,
    patience: int = 4,
    lr: float = 1e-2,
) -> dict[str, Any]:
    """Fit ``guide.state_head`` (:class:`velopyro.nn.StateHead`) to the exact E[pi | u, s, z] of a fitted model.

    For a model whose pi is integrated out (``pi_guide="collapsed"``) the exact posterior mean of pi given a
    cell's data and z (:meth:`velopyro.coupling.StateCoupling.collapsed_pi_mean`, from the per-state
    likelihoods of eq. 20-21 at the kinetics of z, eq. 1-19) follows that cell's own observations. The head
    maps z alone to state probabilities and is fitted by cross-entropy to that mean, with z drawn from
    q(z | u, s) (the fitted encoder, eq. 22) at every step: its optimum is E[E[pi | u, s, z] | z], the
    amortised read-out that q(pi | z) gives the uncollapsed model. The model and the encoder are not
    changed (their parameters get no gradient); the ELBO is not involved. Early stopping on the held-out
    cells' cross-entropy (the training cells' when there are none); the best state is kept.

    Parameters
    ----------
    model, guide
        The fitted :class:`~velopyro.model.VeloVIModel` (``collapse_pi=True``) and its guide, which has a
        ``state_head``.
    data
        Inputs on the host (or the device).
    train_idx, validation_idx
        The fit's split.
    device
        Where to compute.
    seed
        The head's initial weights, minibatch order and draws of z (the caller's random states are restored).
    batch_size, max_epochs, patience, lr
        Minibatch size, upper bound on epochs, epochs without improvement before stopping, AdamW learning rate.

    Returns
    -------
    dict
        ``epochs``, ``best_epoch``, ``validation_cross_entropy`` (per cell and gene, per epoch) and ``seconds``.
    """
    head = guide.state_head
    t0 = time.perf_counter()
    with seeded(seed):
        for m in head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        head.to(device)
        optim = _adamw(_parameter_groups(head, torch.nn.Module(), 1e-2), lr=lr, eps=0.01)
        gen = torch.Generator().manual_seed(seed)
        model.eval()
        guide.eval()

        def targets(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            args = data.batch(b, device)
            with torch.no_grad():
                loc, scale = guide.encode(*args[1:])
                z = loc + scale * torch.randn_like(loc)
                ks = model.kinetic_state(z)
                ll_u, ll_s = model.state_log_likelihood(ks["u_bar"], ks["s_bar"], *args[1:])
                return z, model.coupling.collapsed_pi_mean(model.pi_prior, ll_u, ll_s)

        def cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return -(target * head.log_probs(z)).sum(-1).mean()

        score_idx = validation_idx if len(validation_idx) else train_idx
        train_t = torch.as_tensor(train_idx)
        curve: list[float] = []
        best, best_state, best_epoch, bad = math.inf, None, 0, 0
        for epoch in range(1, max_epochs + 1):
            head.train()
            order = data.shuffle(train_t, gen)
            for start in range(0, len(order), batch_size):
                b = order[start:start + batch_size]
                if len(b) < 2:
                    continue  # BatchNorm needs 2 cells
                z, target = targets(b)
                loss = cross_entropy(z, target)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
            head.eval()
            total = 0.0
            with torch.no_grad():
                for start in range(0, len(score_idx), 1024):
                    b = torch.as_tensor(score_idx[start:start + 1024])
                    total += float(cross_entropy(*targets(b))) * len(b)
            curve.append(total / max(len(score_idx), 1))
            if curve[-1] < best:
                best, best_epoch, bad = curve[-1], epoch, 0
                best_state = copy.deepcopy(head.state_dict())
            else:
                bad += 1
                if bad >= patience:
                    break
        head.load_state_dict(best_state)
        head.fitted.fill_(True)
        head.eval()
    return {"epochs": len(curve), "best_epoch": best_epoch, "validation_cross_entropy": curve,
            "seconds": time.perf_counter() - t0}
