"""velopyro adapter: the same interface as :class:`benchmarks.run_velovi.VeloviAdapter`.

Only this module knows velopyro's API; :mod:`benchmarks.run_all` talks to both adapters identically.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from unittest import mock

import numpy as np

from benchmarks.common import BATCH_SIZE, FitRecord, Stopwatch


def velopyro_available() -> bool:
    """Whether ``velopyro.VeloPyro`` can be imported."""
    try:
        import velopyro

        velopyro.VeloPyro  # noqa: B018 - the lazy attribute import is the check
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
    return True


def _constructor_defaults() -> dict:
    """Default keyword values of ``velopyro.VeloPyro`` (empty if velopyro is not importable)."""
    if not velopyro_available():
        return {}
    import velopyro

    params = inspect.signature(velopyro.VeloPyro.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


class VelopyroAdapter:
    """Fit velopyro on ``layers['Ms'] / layers['Mu']`` and expose outputs as numpy arrays.

    Parameters
    ----------
    n_samples
        Posterior draws averaged in every output (velovi's tutorial uses 25).
    state_coupling, pi_guide
        Passed to :class:`velopyro.VeloPyro`; ``None`` takes velopyro's own default. ``name`` records
        the values used.
    fit_kwargs
        Extra keyword arguments for :meth:`velopyro.VeloPyro.fit` (e.g. ``jit=True``).
    output_batch_size
        Cells per batch when computing outputs (the same for both models).
    """

    def __init__(
        self,
        n_samples: int = 25,
        state_coupling: str | None = None,
        pi_guide: str | None = None,
        fit_kwargs: dict | None = None,
        output_batch_size: int = 1024,
        init_kwargs: dict | None = None,
    ) -> None:
        self.n_samples = n_samples
        self.init_kwargs = dict(init_kwargs or {})
        self.output_batch_size = output_batch_size
        defaults = _constructor_defaults()
        self.state_coupling = state_coupling or defaults.get("state_coupling", "independent")
        self.pi_guide = pi_guide or defaults.get("pi_guide", "dirichlet")
        self.fit_kwargs = dict(fit_kwargs or {})
        self.name = f"velopyro[{self.state_coupling},{self.pi_guide}]"
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
        """Train with velopyro's defaults (AdamW 1e-2, weight decay 1e-2, clip 10, 90/10 split).

        If ``validation_indices`` is given the same cells are held out as for the other model: through
        ``fit(validation_indices=...)`` when velopyro offers it, else by substituting the split function
        velopyro's API calls (``velopyro.api.split_indices``) for the duration of the fit. Whether it
        worked is checked by the caller against :attr:`validation_indices`.
        """
        import velopyro
        import velopyro.api

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
            layers = {"spliced_layer": "Ms", "unspliced_layer": "Mu"}  # unless init_kwargs name others (counts)
            self.model = velopyro.VeloPyro(
                adata,
                state_coupling=self.state_coupling,
                pi_guide=self.pi_guide,
                **{**layers, **self.init_kwargs},
            )
        kwargs = dict(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=1e-2,
            weight_decay=1e-2,
            early_stopping=early_stopping,
            patience=patience,
            seed=seed,
            progress_bar=False,
            device="cpu",
        )
        kwargs.update(self.fit_kwargs)
        split_patch = contextlib.nullcontext()
        if validation_indices is not None:
            val = np.sort(np.asarray(validation_indices))
            train = np.setdiff1d(np.arange(adata.n_obs), val)
            options = getattr(getattr(velopyro, "train", None), "TrainConfig", None)
            if ("validation_indices" in inspect.signature(self.model.fit).parameters
                    or "validation_indices" in getattr(options, "__dataclass_fields__", {})):
                kwargs["validation_indices"] = val
            elif hasattr(velopyro.api, "split_indices"):
                split_patch = mock.patch.object(
                    velopyro.api, "split_indices", lambda n_cells, train_size, seed: (train, val)
                )
            else:
                warnings.warn("cannot impose the validation cells on velopyro; it uses its own split", stacklevel=2)
        with split_patch, Stopwatch() as wall:
            self.model.fit(**kwargs)
        hist = self.model.history
        rec.setup_seconds = setup.seconds
        rec.wall_seconds = wall.seconds
        rec.cpu_seconds = wall.cpu_seconds
        rec.epoch_seconds = [float(x) for x in hist.get("seconds", [])]
        rec.n_epochs = len(rec.epoch_seconds)
        rec.stopped_early = rec.n_epochs < max_epochs
        rec.validation_loss = [float(x) for x in hist.get("validation_loss", [])]
        rec.train_loss = [float(x) for x in hist.get("train_loss", [])]
        return rec

    @property
    def validation_indices(self) -> np.ndarray:
        """Cells held out for validation."""
        return np.asarray(self.model.validation_indices)

    @property
    def train_indices(self) -> np.ndarray:
        """Cells trained on."""
        return np.asarray(self.model.train_indices)

    # ---------------------------------------------------------------- outputs
    #: Read-outs scored besides the default (``run_all`` reports them side by side): the same fit, with every
    #: output's states weighted by p(k | data) and by pi itself (veloVI's read-out). velopyro's default
    #: weights velocity by pi and latent time and states by p(k | data).
    alternative_readouts = ("posterior", "pi")

    def velocity(self, state_weights: str | None = None) -> np.ndarray:
        """Spliced velocity, expectation over states (velopyro's default weights unless given), no clipping."""
        return np.asarray(
            self.model.get_velocity(
                n_samples=self.n_samples, statistic="mean", mode="spliced", batch_size=self.output_batch_size,
                **self._weights(state_weights),
            )
        )

    def latent_time(self, state_weights: str | None = None) -> np.ndarray:
        """Per-gene latent time (model units, [0, t_max])."""
        return np.asarray(self.model.get_latent_time(n_samples=self.n_samples, batch_size=self.output_batch_size,
                                                     **self._weights(state_weights)))

    def state_probs(self, state_weights: str | None = None) -> np.ndarray:
        """Cells x genes x 4 state probabilities (velopyro's default: posterior given the data)."""
        return np.asarray(
            self.model.get_state_assignment(n_samples=self.n_samples, hard=False, batch_size=self.output_batch_size,
                                            **self._weights(state_weights))
        )

    @staticmethod
    def _weights(state_weights: str | None) -> dict:
        return {} if state_weights is None else {"state_weights": state_weights}

    def rates(self) -> dict:
        """Per-gene rates of the model's kinetics (alpha, beta, gamma for the default) and switch time t_s."""
        r = self.model.get_rates()
        kin = self.model.model.kinetics
        return {k: np.asarray(r[k]) for k in (*kin.rate_names, "t_s")}

    def state_mean_draws(self, indices: np.ndarray, n_samples: int = 10, chunk: int = 1024) -> list[dict]:
        """Per-state means, pi and per-gene noise std for ``indices``, one dict per posterior draw.

        Each draw samples z ~ q(z | u, s) and pi ~ q(pi | z) (velopyro's posterior iterator).
        """
        from velopyro import posterior

        m = self.model
        rates = m.get_rates()
        parts: dict[int, dict[str, list]] = {}
        for _, sno, smp in posterior.iterate_samples(
            m.model, m.guide, m.data, n_samples=n_samples, batch_size=chunk, device=m.device, indices=indices
        ):
            d = parts.setdefault(sno, {"mean_u": [], "mean_s": [], "pi": []})
            d["mean_u"].append(smp["u_bar"].cpu().numpy())
            d["mean_s"].append(smp["s_bar"].cpu().numpy())
            # pi as a function of z (q(pi | z), or the state head when pi is integrated out): with pi integrated
            # out, smp["pi"] is E[pi | u, s, z], which reads the held-out cell's own data and would flatter it
            d["pi"].append(posterior.state_weights(smp, "pi").cpu().numpy())
        draws = []
        for sno in sorted(parts):
            draw = {k: np.concatenate(v, axis=0) for k, v in parts[sno].items()}
            draw["sigma_u"], draw["sigma_s"] = rates["sigma_u"], rates["sigma_s"]
            draws.append(draw)
        return draws
