"""Read a fitted AnnData back for the phase portraits: observed and fitted (u, s) per cell and gene.

What :meth:`velopyro.VeloPyro.write_to_adata` wrote (``var['fit_*']``, ``layers['fit_t']``,
``layers['fit_state']``) is turned into the kinetic trajectory (eq. 1-12) through the fit's kinetics object
(its registered name is ``uns['velopyro']['config']['kinetics']``; ``"constant"`` when absent), on the scale drawn:
the fitted likelihood's expected observation of the kinetic mean (:meth:`velopyro.likelihoods.Likelihood.
expected_observation`), the likelihood rebuilt from the ``var['fit_<name>']`` columns of its parameters.
Used by :func:`velopyro.tl.gene_fit_r2` and :mod:`velopyro.pl`; it sits below both so that neither
imports the other for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validation import VelopyroInputError


def _config(adata: Any) -> dict[str, Any]:
    return dict(adata.uns.get("velopyro", {}).get("config", {}))


def _kinetics(adata: Any) -> Any:
    """The fit's kinetics object (:mod:`velopyro.kinetics`), by the name recorded in the configuration."""
    from .kinetics import KINETICS

    name = _config(adata).get("kinetics", "constant")
    if name not in KINETICS:
        raise VelopyroInputError(
            f"adata was fitted with kinetics {name!r}, which is not registered (registered: "
            f"{', '.join(sorted(KINETICS))}); import the module that registers it (velopyro.register_kinetics)."
        )
    return KINETICS[name]()


def _fit_keys(adata: Any) -> dict[str, str]:
    """``var`` key of each of the kinetics' rates: ``fit_<rate>``, ``fit_t_`` for the switch time."""
    kin = _kinetics(adata)
    return {k: "fit_t_" if k == "t_s" else f"fit_{k}" for k in (*kin.rate_names, "t_s")}


def _require_fit(adata: Any, what: str) -> None:
    missing = [k for k in _fit_keys(adata).values() if k not in adata.var]
    missing += [k for k in ("fit_t", "fit_state") if k not in adata.layers]
    if missing:
        raise VelopyroInputError(
            f"{what} needs a fitted AnnData, but {', '.join(missing)} are missing; run "
            "model.write_to_adata() after model.fit()"
        )


def _dense_cols(x: Any, idx: np.ndarray) -> np.ndarray:
    x = x[:, idx]
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _size_factors(adata: Any, cfg: dict[str, Any], layer: str) -> np.ndarray:
    """The model's size factors: an obs column, or total counts over the genes / their median."""
    key = cfg.get("size_factor_key")
    if key:
        return np.asarray(adata.obs[key], dtype=np.float64)
    x = adata.X if layer == "X" else adata.layers[layer]
    tot = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    return tot / np.median(tot)


def _likelihood(adata: Any, idx: np.ndarray | None = None) -> Any:
    """The fitted likelihood of ``adata`` (by its registered name), with the genes ``idx``' parameters loaded
    from ``var['fit_<name>']`` (no parameters when ``idx`` is None)."""
    from .likelihoods import get_likelihood

    name = _config(adata).get("likelihood", "normal")
    try:
        lik = get_likelihood(name)
    except ValueError:
        raise VelopyroInputError(
            f"adata was fitted with likelihood {name!r}, which is not registered in this session; register its "
            "class (velopyro.likelihoods.register_likelihood) before reading the fit back"
        ) from None
    if idx is not None:
        missing = [f"fit_{n}" for n in lik.gene_param_names if f"fit_{n}" not in adata.var]
        if missing:
            raise VelopyroInputError(f"var {', '.join(missing)} of the {name!r} likelihood missing; run "
                                     "model.write_to_adata() after model.fit()")
        lik.load_gene_params({n: np.asarray(adata.var[f"fit_{n}"], dtype=np.float64)[idx]
                              for n in lik.gene_param_names})
    return lik


def _is_count(adata: Any) -> bool:
    return bool(_likelihood(adata).is_count)


def _gene_rates(adata: Any, idx: np.ndarray) -> dict[str, Any]:
    """The fitted rates of the genes ``idx`` (``fit_*``; ``kinetics``: the object, ``rates``: its rate dict of
    float64 tensors)."""
    import torch

    keys = _fit_keys(adata)
    out: dict[str, Any] = {v: np.asarray(adata.var[v], dtype=np.float64)[idx] for v in keys.values()}
    out["kinetics"] = _kinetics(adata)
    out["rates"] = {k: torch.as_tensor(out[v]) for k, v in keys.items()}
    return out


def _layers(adata: Any) -> tuple[str, str]:
    cfg = _config(adata)
    count = _is_count(adata)
    s = cfg.get("spliced_layer", "spliced" if count else "Ms")
    u = cfg.get("unspliced_layer", "unspliced" if count else "Mu")
    return s, u


def _observed(adata: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed (u, s) of the genes ``idx`` on the scale drawn: the layers, or counts / size factor."""
    s_key, u_key = _layers(adata)
    out = []
    for key in (u_key, s_key):
        if key != "X" and key not in adata.layers:
            raise VelopyroInputError(
                f"layer {key!r} (the fitted layer recorded in uns['velopyro']['config']) not found in adata"
            )
        x = _dense_cols(adata.X if key == "X" else adata.layers[key], idx)
        if _is_count(adata):
            x = x / _size_factors(adata, _config(adata), key)[:, None]
        out.append(x)
    return out[0], out[1]


def _observe(lik: Any, mean: np.ndarray, modality: str) -> np.ndarray:
    """The likelihood's expected observation (size factor 1) of kinetic means ``(..., genes)``."""
    import torch

    with torch.no_grad():
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        return lik.expected_observation(m, modality).numpy().astype(np.float64)


def _curve(rates: dict[str, np.ndarray], t: np.ndarray, lik: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fitted mean (u, s) at absolute times ``t`` (shape ``(..., genes)``), on the scale drawn (``lik``:
    :func:`_likelihood` of the same genes)."""
    import torch

    u, s = rates["kinetics"].trajectory(torch.as_tensor(np.asarray(t, dtype=np.float64)), rates["rates"])
    return _observe(lik, u.numpy(), "u"), _observe(lik, s.numpy(), "s")


def _phase_data(adata: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observed and fitted (per cell, at its time and state) u and s for the genes ``idx``."""
    _require_fit(adata, "the phase portrait")
    idx = np.asarray(idx)
    obs_u, obs_s = _observed(adata, idx)
    rates = _gene_rates(adata, idx)
    lik = _likelihood(adata, idx)
    t = _dense_cols(adata.layers["fit_t"], idx)
    state = _dense_cols(adata.layers["fit_state"], idx).astype(int)
    fit_u, fit_s = _curve(rates, t, lik)
    kin, r = rates["kinetics"], rates["rates"]
    (iss_u, iss_s), (rss_u, rss_s) = kin.steady_state(r), kin.repression_steady_state(r)
    ss_u, ss_s = _observe(lik, iss_u.numpy(), "u"), _observe(lik, iss_s.numpy(), "s")  # induction steady state
    rs_u, rs_s = _observe(lik, rss_u.numpy(), "u"), _observe(lik, rss_s.numpy(), "s")  # repression's
    fit_u = np.where(state == 1, ss_u, np.where(state == 3, rs_u, fit_u))
    fit_s = np.where(state == 1, ss_s, np.where(state == 3, rs_s, fit_s))
    return obs_u, obs_s, fit_u, fit_s
