"""Training checkpoints that resume: save and restore the whole state of :func:`velopyro.train.train_svi`.

A checkpoint holds everything that decides the rest of a fit: the model's and the guide's ``state_dict``
(parameters and BatchNorm statistics), the AdamW state, the random states (the generator that orders
the minibatches and the global torch / numpy / Python states that Pyro's Monte Carlo draws and dropout
use), the early-stopping state (best loss, best parameters, epochs without improvement), the history and
the epoch. A fit resumed from it therefore continues exactly as an uninterrupted fit would.

The file holds only tensors, dicts, lists, strings and numbers (the random states as ``uint8`` / ``int64``
tensors), so ``torch.load(path, weights_only=True)`` reads it: loading a checkpoint runs no pickled code.
It is written atomically (a temporary file in the same directory, then ``os.replace``), so a fit killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import VelopyroInputError

__all__ = ["CHECKPOINT_FILE", "TRAJECTORY_SETTINGS", "checkpoint_path", "save_checkpoint", "load_checkpoint",
           "capture_rng", "restore_rng", "check_settings", "training_state", "restore_training",
           "torch_load_reason"]

CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = 1
# settings that change the sequence of updates: a resumed fit must use the saved values (max_epochs,
# device, preload and progress_bar may change)
TRAJECTORY_SETTINGS = ("batch_size", "lr", "weight_decay", "eps", "clip_norm", "early_stopping", "patience",
                       "min_delta", "kl_warmup_epochs", "penalty_fade", "jit", "seed")


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file for ``path``: the path itself if it is a file, else ``path/checkpoint.pt``.

    Parameters
    ----------
    path
        A checkpoint directory (as given to ``checkpoint_dir``) or a checkpoint file.

    Returns
    -------
    pathlib.Path
        The file.
    """
    p = Path(path)
    return p if p.is_file() else p / CHECKPOINT_FILE


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """The random states a fit draws from, as tensors and numbers.

    Parameters
    ----------
    generator
        The local generator of the minibatch order.

    Returns
    -------
    dict
        ``generator`` and ``torch`` (``uint8`` tensors), ``cuda`` (a list of them), ``numpy`` (MT19937 key
        as an ``int64`` tensor and its position and Gaussian cache) and ``python`` (the state tuple of ints).
    """
    # numpy's legacy global state: what pyro.set_rng_seed seeds, so it is part of a fit's state
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Set the generator and the global random states to those :func:`capture_rng` returned.

    Parameters
    ----------
    state
        The ``rng`` entry of a checkpoint.
    generator
        The local generator of the minibatch order.
    """
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    legacy = ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def check_settings(saved: dict[str, Any], settings: dict[str, Any]) -> None:
    """Raise if a setting that changes the sequence of updates differs from the checkpoint's.

    Parameters
    ----------
    saved
        The checkpoint's ``settings``.
    settings
        The settings of the fit that resumes.

    Raises
    ------
    VelopyroInputError
        Naming the first setting that differs and its saved value.
    """
    for key in TRAJECTORY_SETTINGS:
        if key in saved and key in settings and saved[key] != settings[key]:
            raise VelopyroInputError(
                f"The checkpoint was written with {key}={saved[key]!r} but this fit has {key}={settings[key]!r}; "
                f"resume with {key}={saved[key]!r} (only max_epochs, device, preload and progress_bar may change)."
            )


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically (temporary file, then ``os.replace``).

    Parameters
    ----------
    directory
        Created if missing.
    state
        Tensors, dicts, lists, strings and numbers only.

    Returns
    -------
    pathlib.Path
        The checkpoint file.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": _FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    Parameters
    ----------
    path
        The checkpoint directory or file.

    Returns
    -------
    dict
        The saved state (tensors on the CPU).
    """
    p = checkpoint_path(path)
    if not p.exists():
        raise FileNotFoundError(f"No checkpoint at {str(p)!r}; pass the checkpoint_dir of an earlier fit.")
    if p.is_dir():
        raise VelopyroInputError(f"{str(p)!r} is a directory, not a checkpoint file; pass the checkpoint_dir of an "
                                 "earlier fit (it holds checkpoint.pt).")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise VelopyroInputError(f"{str(p)!r} is not a readable velopyro checkpoint ({torch_load_reason(err)}); "
                                 "velopyro never unpickles other objects: resume from the checkpoint_dir of a "
                                 "velopyro fit, or start a new fit without resume.") from err
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise VelopyroInputError(f"{str(p)!r} is not a velopyro checkpoint (format {_FORMAT}); resume from the "
                                 "checkpoint_dir of a velopyro fit, or start a new fit without resume.")
    return state


def torch_load_reason(err: BaseException) -> str:
    """A one-line reason why ``torch.load(weights_only=True)`` failed, without torch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds).

    Parameters
    ----------
    err
        The exception ``torch.load`` raised.

    Returns
    -------
    str
        E.g. ``"it holds Python objects other than tensors"``.
    """
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects other than tensors"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(err).__name__
    return f"{type(err).__name__}: {first}" if len(first) < 200 else type(err).__name__


def training_state(
    epoch: int,
    model: torch.nn.Module,
    guide: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: dict[str, list],
    early_stopping: dict[str, Any],
    settings: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that decides the rest of a fit after ``epoch``, ready for :func:`save_checkpoint`.

    Parameters
    ----------
    epoch
        The last completed epoch.
    model, guide
        The Pyro modules.
    optimizer
        The torch optimiser.
    generator
        The generator of the minibatch order.
    history
        Lists per epoch (``epoch``, ``train_loss``, ...).
    early_stopping
        ``best``, ``best_epoch``, ``bad_epochs``, ``stopped`` and ``best_state`` (a pair of state dicts or
        None).
    settings
        The fit's settings (see :data:`TRAJECTORY_SETTINGS`).
    meta
        Caller's description of the data and model (e.g. configuration, cell split), stored as given.

    Returns
    -------
    dict
        The state (tensors copied to the CPU).
    """
    def cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    es = dict(early_stopping)
    best_state = es.pop("best_state")
    es["best_model"], es["best_guide"] = (None, None) if best_state is None else (cpu(best_state[0]),
                                                                                  cpu(best_state[1]))
    return {"epoch": int(epoch), "model": cpu(model.state_dict()), "guide": cpu(guide.state_dict()),
            "optimizer": optimizer.state_dict(), "rng": capture_rng(generator),
            "history": {k: list(v) for k, v in history.items()}, "early_stopping": es,
            "settings": dict(settings), "meta": dict(meta or {})}


def restore_training(
    state: dict[str, Any],
    model: torch.nn.Module,
    guide: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: dict[str, Any],
) -> tuple[int, dict[str, list], dict[str, Any]]:
    """Load a checkpoint's state into a fit's objects (in place) and the global random states.

    Parameters
    ----------
    state
        From :func:`load_checkpoint`.
    model, guide, optimizer, generator
        The fit's objects, built as for a fresh fit.
    settings
        The resuming fit's settings; those that change the updates must equal the saved ones.

    Returns
    -------
    tuple
        ``(epoch, history, early_stopping)``: the last completed epoch, the history lists and the
        early-stopping state with ``best_state`` a pair of state dicts or None.
    """
    check_settings(state["settings"], settings)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"], generator)
    es = dict(state["early_stopping"])
    bm, bg = es.pop("best_model"), es.pop("best_guide")
    es["best_state"] = None if bm is None else (bm, bg)
    return int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}, es
