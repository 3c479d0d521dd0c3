"""velovi 0.3.1 adapter: fit with per-epoch wall times, then the outputs the metrics need.

The adapter only calls velovi's public model API and its module's ``forward`` (for the per-state mixture
parameters used by the shared held-out log-likelihood); it re-implements nothing of velovi.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import BATCH_SIZE, FitRecord, Stopwatch, layer_array

try:  # lightning is a dependency of scvi-tools; keep this module importable without it for linting
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object


class EpochTimer(Callback):
    """Lightning callback recording the wall time of every epoch (training + its validation pass).

    Lightning runs the validation loop before ``on_train_epoch_end``, so start -> end spans both.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102 - lightning hook
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102 - lightning hook
        self.seconds.append(time.perf_counter() - self._t0)


class VeloviAdapter:
    """Fit velovi on ``layers['Ms'] / layers['Mu']`` and expose outputs as numpy arrays.

    ``accelerator`` is Lightning's (``"cpu"``, the benchmarks' default, or ``"gpu"``: :mod:`benchmarks.gpu`).
    """

    name = "velovi"

    def __init__(self, n_samples: int = 25, output_batch_size: int = 1024, accelerator: str = "cpu") -> None:
        self.n_samples = n_samples
        self.output_batch_size = output_batch_size
        self.accelerator = accelerator
        self.model = None
        self.adata = None

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        adata,
        dataset: str,
        max_epochs: int = 500,
        early_stopping: bool = True,
        patience: int = 45,
        batch_size: int = BATCH_SIZE,
        seed: int = 0,
        validation_indices: np.ndarray | None = None,
    ) -> FitRecord:
        """Train with velovi's defaults (AdamW 1e-2, weight decay 1e-2, clip 10, 90/10 split).

        ``validation_indices`` cannot be imposed on velovi (its ``train`` builds its own split from
        ``scvi.settings.seed``); the split it used is available as :attr:`validation_indices` after fitting.
        """
        import scvi
        from velovi import VELOVI

        scvi.settings.seed = seed
        self.adata = adata
        rec = FitRecord(
            model=self.name,
            dataset=dataset,
            n_cells=adata.n_obs,
            n_genes=adata.n_vars,
            max_epochs=max_epochs,
            early_stopping=early_stopping,
        )
        with Stopwatch() as setup:
            VELOVI.setup_anndata(adata, spliced_layer="Ms", unspliced_layer="Mu")
            self.model = VELOVI(adata)
        timer = EpochTimer()
        with Stopwatch() as wall:
            self.model.train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                early_stopping_patience=patience,
                accelerator=self.accelerator,
                devices=1,
                enable_progress_bar=False,
                check_val_every_n_epoch=1,  # validate every epoch even without early stopping
                callbacks=[timer],
            )
        rec.setup_seconds = setup.seconds
        rec.wall_seconds = wall.seconds
        rec.cpu_seconds = wall.cpu_seconds
        rec.epoch_seconds = timer.seconds
        rec.n_epochs = len(timer.seconds)
        rec.stopped_early = rec.n_epochs < max_epochs
        hist = self.model.history
        if "elbo_validation" in hist:
            rec.validation_loss = [float(x) for x in np.ravel(hist["elbo_validation"].to_numpy())]
        if "elbo_train" in hist:
            rec.train_loss = [float(x) for x in np.ravel(hist["elbo_train"].to_numpy())]
        self.model.module.eval()
        return rec

    @property
    def validation_indices(self) -> np.ndarray:
        """Cells velovi held out for validation."""
        return np.asarray(self.model.validation_indices)

    @property
    def train_indices(self) -> np.ndarray:
        """Cells velovi trained on."""
        return np.asarray(self.model.train_indices)

    # ---------------------------------------------------------------- outputs
    def velocity(self) -> np.ndarray:
        """Spliced velocity, expectation over states, averaged over posterior samples (no clipping)."""
        return np.asarray(
            self.model.get_velocity(
                n_samples=self.n_samples,
                velo_statistic="mean",
                return_numpy=True,
                clip=False,
                batch_size=self.output_batch_size,
            )
        )

    def latent_time(self) -> np.ndarray:
        """Per-gene latent time (model units, [0, t_max]), averaged over posterior samples."""
        return np.asarray(
            self.model.get_latent_time(
                n_samples=self.n_samples,
                time_statistic="mean",
                return_numpy=True,
                batch_size=self.output_batch_size,
            )
        )

    def state_probs(self) -> np.ndarray:
        """Cells x genes x 4 state probabilities (mean of q(pi))."""
        states, _ = self.model.get_state_assignment(
            n_samples=self.n_samples, hard_assignment=False, batch_size=self.output_batch_size
        )
        return np.asarray(states)

    def rates(self) -> dict:
        """Per-gene alpha, beta, gamma and switch time t_s."""
        import torch
        import torch.nn.functional as F

        r = self.model.get_rates()
        with torch.no_grad():
            t_s = torch.clamp(F.softplus(self.model.module.switch_time_unconstr), 0, self.model.module.t_max)
        return {k: np.asarray(r[k]) for k in ("alpha", "beta", "gamma")} | {"t_s": t_s.cpu().numpy()}

    def state_mean_draws(self, indices: np.ndarray, n_samples: int = 10, chunk: int = 1024) -> list[dict]:
        """Per-state means, pi and per-gene noise std for the cells in ``indices``, one dict per draw.

        Each draw samples z ~ q(z | u, s) and pi ~ q(pi | z), as velovi's training objective does, and
        reads the mixture velovi builds from them (``generative`` outputs ``mixture_dist_u/s``).
        """
        import torch
        from velovi._constants import REGISTRY_KEYS

        module = self.model.module
        module.eval()
        xs_all = layer_array(self.adata, "Ms")[indices]
        xu_all = layer_array(self.adata, "Mu")[indices]
        draws = []
        with torch.inference_mode():
            for _ in range(n_samples):
                parts = {"mean_u": [], "mean_s": [], "pi": []}
                sigma_u = sigma_s = None
                for start in range(0, len(indices), chunk):
                    tensors = {
                        REGISTRY_KEYS.X_KEY: torch.from_numpy(xs_all[start : start + chunk]),
                        REGISTRY_KEYS.U_KEY: torch.from_numpy(xu_all[start : start + chunk]),
                    }
                    _, gen = module.forward(tensors, compute_loss=False)
                    comp_u = gen["mixture_dist_u"].component_distribution
                    comp_s = gen["mixture_dist_s"].component_distribution
                    parts["mean_u"].append(comp_u.loc.cpu().numpy())
                    parts["mean_s"].append(comp_s.loc.cpu().numpy())
                    parts["pi"].append(gen["mixture_dist_u"].mixture_distribution.probs.cpu().numpy())
                    # per-gene std of the first state; the metric re-applies the (1, 1, 1, 0.1) multipliers
                    sigma_u = comp_u.scale[0, :, 0].cpu().numpy()
                    sigma_s = comp_s.scale[0, :, 0].cpu().numpy()
                    ratio = (comp_u.scale[0, :, 3] / comp_u.scale[0, :, 0]).cpu().numpy()
                    if not np.allclose(ratio, 0.1, rtol=1e-4):
                        raise RuntimeError("unexpected per-state noise multipliers in velovi")
                draw = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
                draw["sigma_u"], draw["sigma_s"] = sigma_u, sigma_s
                draws.append(draw)
        return draws
