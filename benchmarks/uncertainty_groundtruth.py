"""Ground truth for veloVI's uncertainty read-outs on the simulators (numbers quoted in the README).

``python -m benchmarks.uncertainty_groundtruth`` (about 20 s): one of four cell types (cut on the true
clock) gets its u and s shuffled per gene, independently: no kinetics there. Prints the AUC with which
each per-cell statistic flags the shuffled cells and the permutation score flags the shuffled type.

``python -m benchmarks.uncertainty_groundtruth coverage [--seeds 0 1 2]``: the empirical coverage of the
posterior intervals of velocity (:meth:`velopyro.VeloPyro.get_velocity_interval`, equal-tailed quantiles
of 100 posterior draws) against the simulated velocity, on both simulators of :mod:`benchmarks.data`
(scVelo's and velopyro's, 1,000 cells x 100 genes, the direction benchmark's sizes), one full fit per
simulator and seed (velopyro's defaults, up to 500 epochs with early stopping). Velocity's scale is
identifiable only up to a per-gene time scale (rates x c, times / c fit the data equally well), so the
truth is compared three ways:

- ``raw``: the simulated ds/dt in model units, as it is;
- ``rate``: the truth rescaled per gene by ``c_g = fitted gamma / true gamma`` (the time-scale ratio the
  fit itself implies; gamma is unchanged by the per-gene min-max scaling of s), chosen before looking
  at the velocities, the headline number;
- ``spread``: rescaled per gene so that its standard deviation over cells equals that of the posterior
  mean velocity (matches the scales without using the errors; a least-squares scale would not do: it
  shrinks the truth towards 0 for a poorly fitted gene, and 0 lies inside most intervals).

Per alignment: the share of (cell, gene) pairs inside the interval at nominal 50/80/90/95/99%, the
median over genes of the per-gene coverage, and the ratio of the median absolute error of the
posterior mean to the median half-width of the 90% interval (about 1 for calibrated Gaussian intervals,
>> 1: the intervals are far narrower than the error). Results: ``benchmarks/results/uncertainty/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.metrics import roc_auc_score

import velopyro


def shuffled() -> None:
    """Fit, score, print (the shuffled cell type)."""
    t0 = time.time()
    adata = velopyro.datasets.simulate(n_cells=400, n_genes=20, seed=0)
    rng = np.random.default_rng(1)
    types = np.digitize(adata.obs["true_t"], [5, 10, 15])
    adata.obs["type"] = np.array(["a", "b", "c", "d"])[types]
    shuffled = types == 1
    for key in ("Mu", "Ms"):
        sub = adata.layers[key][shuffled]
        adata.layers[key][shuffled] = sub[np.argsort(rng.random(sub.shape), axis=0), np.arange(sub.shape[1])]
    x = adata.layers["Ms"]
    _, idx = cKDTree(x).query(x, k=16)
    rows = np.repeat(np.arange(len(x)), 15)
    g = sp.csr_matrix((np.ones(len(rows)), (rows, idx[:, 1:].ravel())), shape=(len(x), len(x)))
    adata.obsp["connectivities"] = sp.csr_matrix(((g + g.T) > 0).astype(float))
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=100, batch_size=128, progress_bar=False, seed=0)
    df = model.get_directional_uncertainty(n_samples=30, extrinsic=True, n_extrinsic_samples=10)
    print("AUC of each statistic for the shuffled cells (higher uncertainty; for *_mean: lower):")
    for k in df.columns:
        print(f"  {k}: {roc_auc_score(shuffled, -df[k] if 'mean' in k else df[k]):.3f}")
    print("median per type:\n", df.groupby(adata.obs["type"].to_numpy()).median().T.round(3))
    ps = model.get_permutation_scores("type")
    lab = np.broadcast_to(ps.columns.to_numpy() == "b", ps.shape).ravel()
    print("permutation score median per type:", ps.median().round(3).to_dict())
    print(f"AUC of a low permutation score for the shuffled type: {roc_auc_score(lab, -ps.to_numpy().ravel()):.3f}")
    print(f"{time.time() - t0:.0f} s")


LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
SIM_SIZE = {"n_cells": 1000, "n_genes": 100}  # as benchmarks/direction.py
OUT_DIR = Path(__file__).resolve().parent / "results" / "uncertainty"


def alignments(mean: np.ndarray, truth: np.ndarray, fit_gamma: np.ndarray, true_gamma: np.ndarray) -> dict:
    """Per-gene scale factors applied to the truth: ``raw`` (1), ``rate`` (gamma ratio), ``spread`` (sd ratio)."""
    sd_t = truth.std(0)
    spread = np.divide(mean.std(0), sd_t, out=np.ones_like(sd_t), where=sd_t > 0)
    return {"raw": np.ones(truth.shape[1]), "rate": fit_gamma / true_gamma, "spread": spread}


def coverage_scores(q: np.ndarray, mean: np.ndarray, truth: np.ndarray, scale: np.ndarray,
                    levels: tuple[float, ...] = LEVELS) -> dict:
    """Coverage of the truth scaled per gene by ``scale``; ``q`` holds the quantiles of :func:`_quantiles`."""
    from velopyro.uncertainty import interval_coverage

    t = truth * scale[None, :]
    out: dict = {"pairs": {}, "gene_median": {}}
    for i, lev in enumerate(levels):
        lo, hi = q[i], q[len(q) - 1 - i]
        out["pairs"][str(lev)] = interval_coverage(lo, hi, t)
        out["gene_median"][str(lev)] = float(np.nanmedian(interval_coverage(lo, hi, t, axis=0)))
    i90 = levels.index(0.9)
    half = 0.5 * (q[len(q) - 1 - i90] - q[i90])
    out["error_over_halfwidth_90"] = float(np.median(np.abs(mean - t)) / max(np.median(half), 1e-12))
    out["median_halfwidth_90_over_abs_truth"] = float(np.median(half) / max(np.median(np.abs(t)), 1e-12))
    return out


def _quantiles(levels: tuple[float, ...] = LEVELS) -> list[float]:
    """The lower bounds of ``levels`` (ascending levels), then the upper bounds: q[i], q[-1 - i] bound level i."""
    lows = [(1 - lev) / 2 for lev in levels]
    return lows + [1 - x for x in reversed(lows)]


def coverage_run(simulator: str, seed: int, n_samples: int = 100) -> dict:
    """Fit one simulator at one seed; the coverage of its velocity intervals under each alignment."""
    from benchmarks import data
    from velopyro._rng import seeded
    from velopyro.uncertainty import interval_coverage, velocity_quantiles

    adata = (data.scvelo_simulation if simulator == "scvelo" else data.velopyro_simulation)(**SIM_SIZE)
    truth = data.ground_truth(adata)
    t0 = time.time()
    model = velopyro.VeloPyro(adata.copy())
    model.fit(progress_bar=False, seed=seed)
    fit_s = time.time() - t0
    with seeded(seed):
        q = velocity_quantiles(model, _quantiles(), n_samples=n_samples)
    mean = model.get_velocity(n_samples=n_samples, seed=seed)
    rates = model.get_rates()
    tv = np.asarray(truth.velocity, dtype=np.float64)
    row = {"simulator": simulator, "seed": seed, "n_epochs": len(model.history["epoch"]),
           "converged": bool(model.history.get("converged", True)), "fit_seconds": round(fit_s, 1),
           "n_samples": n_samples}
    for name, scale in alignments(mean, tv, np.asarray(rates["gamma"], np.float64), truth.gamma).items():
        row[name] = coverage_scores(q, mean, tv, scale)
        row[name]["scale_median"] = float(np.median(scale))
    # an over-confident interval (the 90% interval halved around its centre) must cover less
    i90 = LEVELS.index(0.9)
    lo90, hi90 = q[i90].astype(np.float64), q[len(q) - 1 - i90].astype(np.float64)
    mid = 0.5 * (lo90 + hi90)
    scale = alignments(mean, tv, np.asarray(rates["gamma"], np.float64), truth.gamma)["rate"]
    row["rate"]["shrunk_half_pairs_90"] = interval_coverage(0.5 * (lo90 + mid), 0.5 * (hi90 + mid), tv * scale[None])
    return row


def summarise(rows: list[dict]) -> str:
    """Markdown table: mean and sd over seeds of each coverage number."""
    lines = ["# Posterior interval coverage of velocity against the simulated truth", "",
             "`python -m benchmarks.uncertainty_groundtruth coverage` (velopyro defaults, "
             f"{SIM_SIZE['n_cells']} cells x {SIM_SIZE['n_genes']} genes per simulator, 100 posterior draws). "
             "Mean ± sd over seeds. `raw`: truth as simulated; `rate`: truth x fitted/true gamma per gene; "
             "`spread`: truth x sd(posterior mean) / sd(truth) per gene.", ""]
    for sim in sorted({r["simulator"] for r in rows}):
        rs = [r for r in rows if r["simulator"] == sim]
        lines += [f"## {sim} simulator ({len(rs)} seeds; epochs {[r['n_epochs'] for r in rs]})", "",
                  "| alignment | " + " | ".join(f"{int(100 * lev)}% pairs" for lev in LEVELS)
                  + " | 90% gene median | error / half-width (90%) | half-width / abs(truth) |",
                  "|---" * (len(LEVELS) + 4) + "|"]
        for name in ("raw", "rate", "spread"):
            def ms(get, name=name, rs=rs):
                x = np.array([get(r[name]) for r in rs], dtype=float)
                return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.3f}"
            cells = [ms(lambda d, lev=lev: d["pairs"][str(lev)]) for lev in LEVELS]
            cells += [ms(lambda d: d["gene_median"]["0.9"]), ms(lambda d: d["error_over_halfwidth_90"]),
                      ms(lambda d: d["median_halfwidth_90_over_abs_truth"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        shr = np.array([r["rate"]["shrunk_half_pairs_90"] for r in rs])
        lines += ["", f"Over-confident control (the 90% interval halved around its centre, `rate` alignment): "
                  f"{shr.mean():.3f} ± {shr.std(ddof=1) if len(shr) > 1 else 0.0:.3f} of pairs covered.", ""]
    return "\n".join(lines) + "\n"


def coverage(seeds: list[int], simulators: list[str]) -> None:
    """Run, write ``coverage.json`` and ``coverage.md`` (appending runs to the JSON), print the table."""
    from benchmarks.common import set_threads

    set_threads()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "coverage.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for sim in simulators:
        for seed in seeds:
            rows = [r for r in rows if not (r["simulator"] == sim and r["seed"] == seed)]
            row = coverage_run(sim, seed)
            rows.append(row)
            path.write_text(json.dumps(rows, indent=1))
            print(json.dumps({k: row[k] for k in ("simulator", "seed", "n_epochs", "fit_seconds")}),
                  {a: row[a]["pairs"]["0.9"] for a in ("raw", "rate", "spread")}, flush=True)
    md = summarise(rows)
    (OUT_DIR / "coverage.md").write_text(md)
    print(md)


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="shuffled", choices=["shuffled", "coverage"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--simulators", nargs="+", default=["scvelo", "velopyro"], choices=["scvelo", "velopyro"])
    args = parser.parse_args(argv)
    if args.part == "shuffled":
        shuffled()
    else:
        coverage(args.seeds, args.simulators)


if __name__ == "__main__":
    main()
