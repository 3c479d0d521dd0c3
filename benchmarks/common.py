"""Pieces shared by both model adapters: thread settings, the fit record and small helpers."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / "cache"
RESULTS_DIR = BENCH_DIR / "results"

N_THREADS = 2
BATCH_SIZE = 256


def set_threads(n_threads: int = N_THREADS) -> None:
    """Pin torch (and the BLAS libraries under numpy) to ``n_threads`` threads.

    Also sets ``OMP_WAIT_POLICY=PASSIVE`` unless the caller exported a value: with the default (spinning)
    policy, torch's OpenMP threads busy-wait at every barrier, and when any other process competes for
    the two cores an epoch became 6-15x slower (velovi on pancreas: 25 s instead of 4 s per epoch at a
    load average of 5). The setting applies to both models alike. Environment variables only act on
    libraries loaded after this call, so call it first thing.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(n_threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(n_threads)


def quiet() -> None:
    """Silence the deprecation and user warnings that scvelo/scvi/lightning print on every call."""
    warnings.filterwarnings("ignore")
    import logging

    for name in ("scvi", "lightning", "lightning.pytorch", "pytorch_lightning", "scvelo", "anndata"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class FitRecord:
    """What one training run measured, in a form both adapters fill identically.

    ``epoch_seconds`` holds the wall time of each epoch including its validation pass; ``cpu_seconds`` is
    the process CPU time (all threads) of the whole ``fit`` call, a cross-check that is less sensitive to
    other processes competing for the cores than wall time.
    ``validation_loss`` is each framework's own per-cell validation objective (velovi: ``elbo_validation``
    which is reconstruction + KL; velopyro: ``validation_loss`` = -ELBO per cell); they are printed side by
    side but only the shared held-out log-likelihood in :mod:`benchmarks.metrics` is compared directly.
    """

    model: str
    dataset: str
    n_cells: int
    n_genes: int
    max_epochs: int
    early_stopping: bool
    n_epochs: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    setup_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def seconds_per_epoch(self) -> float:
        """Median epoch time, leaving out the first epoch (warm-up) when there are at least three."""
        t = np.asarray(self.epoch_seconds, dtype=float)
        if t.size == 0:
            return float("nan")
        if t.size >= 3:
            t = t[1:]
        return float(np.median(t))

    @property
    def cpu_seconds_per_epoch(self) -> float:
        """Process CPU time of the fit divided by the epochs run."""
        return self.cpu_seconds / self.n_epochs if self.n_epochs else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready dictionary with the derived per-epoch figures added."""
        d = asdict(self)
        d["seconds_per_epoch"] = self.seconds_per_epoch
        d["cpu_seconds_per_epoch"] = self.cpu_seconds_per_epoch
        finite = [(v, i + 1) for i, v in enumerate(self.validation_loss) if np.isfinite(v)]
        d["best_validation_loss"], d["best_epoch"] = min(finite) if finite else (None, None)
        return d


class Stopwatch:
    """Context manager measuring wall and process CPU time: ``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self.seconds = self.cpu_seconds = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0


def layer_array(adata, key: str) -> np.ndarray:
    """Return a dense float32 copy-free (where possible) view of a layer."""
    x = adata.layers[key]
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=np.float32)
