"""Ground truth for veloVI's uncertainty read-outs on the simulators (numbers quoted in the README).

``python -m benchmarks.uncertainty_groundtruth flags --tool velopyro|velovi [--size small|large]``: on
velopyro's simulator, cells are cut into four types on the true clock (a, b, c, d: quarters of
``[0, t_max]``) and one part of the data is given no kinetics:

- ``steady_type``: every cell of type b sits at each gene's induction steady state
  (``u = alpha / beta``, ``s = alpha / gamma``), observed with the simulator's noise: its true velocity is 0
  and its data hold no direction;
- ``shuffled_type``: type b's u and s are shuffled per gene among its cells, independently;
- ``shuffled_genes``: a quarter of the genes have u and s shuffled among all cells.

Per construction and seed: the ROC AUC with which each of veloVI's five per-cell statistics
(:meth:`velopyro.VeloPyro.get_directional_uncertainty`; velovi's own method for velovi) ranks the cells of
the changed type above the rest (for ``directional_cosine_sim_mean``: below), and the AUC with which a low
permutation score (``get_permutation_scores(labels_key="type")``) picks the changed (gene, type) pairs
among all of them. velopyro is read with both state weightings from the same fit (``posterior``: the
default of the uncertainty, ``pi``: that of :meth:`velopyro.VeloPyro.get_velocity`). ``small``: 400 cells
x 20 genes, 100 epochs, batch 128 (the sizes of ``tests/test_uncertainty.py``), seeds 0-4; ``large``:
1,000 x 100 with each tool's default training (up to 500 epochs, early stopping), seeds 0-2. Rows go to
``benchmarks/results/uncertainty/flags_<tool>.json``; ``flags-report`` writes ``flags.md``.

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
from sklearn.metrics import roc_auc_score

CONSTRUCTS = ("steady_type", "shuffled_type", "shuffled_genes")
SIZES = {"small": {"n_cells": 400, "n_genes": 20, "max_epochs": 100, "batch_size": 128, "seeds": [0, 1, 2, 3, 4]},
         "large": {"n_cells": 1000, "n_genes": 100, "max_epochs": None, "batch_size": None, "seeds": [0, 1, 2]}}
STATS = ("directional_cosine_sim_variance", "directional_cosine_sim_difference", "directional_cosine_sim_mean",
         "directional_variance", "directional_difference")
N_DRAWS = 30
CHANGED = "b"
OUT_DIR = Path(__file__).resolve().parent / "results" / "uncertainty"


def construct(name: str, seed: int, n_cells: int, n_genes: int):
    """Simulated data with one part given no kinetics: ``(adata, changed_cells, changed_genes)`` (boolean)."""
    import velopyro

    adata = velopyro.datasets.simulate(n_cells=n_cells, n_genes=n_genes, seed=seed)
    rng = np.random.default_rng([seed, 101])
    types = np.digitize(adata.obs["true_t"], [5.0, 10.0, 15.0])
    adata.obs["type"] = np.array(["a", "b", "c", "d"])[types]
    cells, genes = types == 1, np.zeros(n_genes, bool)
    if name == "steady_type":
        a, b, g = (adata.var[f"true_{k}"].to_numpy() for k in ("alpha", "beta", "gamma"))
        sigma = {m: adata.var[f"true_sigma_{m}"].to_numpy() for m in ("u", "s")}
        for key, m, mean in (("Mu", "u", a / b), ("Ms", "s", a / g)):
            noisy = mean + sigma[m] * rng.standard_normal((cells.sum(), n_genes))
            adata.layers[key][cells] = np.clip(noisy, 0.0, None)
    elif name == "shuffled_type":
        for key in ("Mu", "Ms"):
            sub = adata.layers[key][cells]
            adata.layers[key][cells] = sub[np.argsort(rng.random(sub.shape), axis=0), np.arange(n_genes)]
    elif name == "shuffled_genes":
        cells[:] = False
        genes[rng.choice(n_genes, n_genes // 4, replace=False)] = True
        for key in ("Mu", "Ms"):
            x = adata.layers[key]
            x[:, genes] = x[np.argsort(rng.random((n_cells, genes.sum())), axis=0), np.where(genes)[0]]
    else:
        raise ValueError(f"unknown construction {name!r}")
    adata.X = adata.layers["Ms"].copy()
    return adata, cells, genes


def sign_flips(draws: np.ndarray, cells: np.ndarray) -> dict:
    """Share of draws whose velocity sign differs from that of the mean over draws, averaged over the genes
    of the changed cells and of the others: how often the posterior reverses a gene's direction."""
    flip = (np.sign(draws) != np.sign(draws.mean(0))[None]).mean(0).mean(1)
    return {"changed": float(flip[cells].mean()), "other": float(flip[~cells].mean())}


def flag_aucs(stats, perm, cells: np.ndarray, genes: np.ndarray) -> dict:
    """AUCs of the per-cell statistics (changed cells: higher uncertainty) and of a low permutation score."""
    out: dict = {}
    if cells.any():
        out["cells"] = {k: float(roc_auc_score(cells, -np.asarray(stats[k]) if k.endswith("_mean")
                                               else np.asarray(stats[k]))) for k in STATS}
    p = np.asarray(perm, dtype=float)
    changed = np.zeros(p.shape, bool)
    if cells.any():
        changed[:, list(perm.columns).index(CHANGED)] = True
    else:
        changed[genes, :] = True
    ok = np.isfinite(p)
    out["permutation"] = float(roc_auc_score(changed[ok], -p[ok]))
    return out


def _fit_velopyro(adata, size: dict, seed: int):
    import velopyro

    model = velopyro.VeloPyro(adata)
    kw = {k: size[k] for k in ("max_epochs", "batch_size") if size[k] is not None}
    model.fit(progress_bar=False, seed=seed, **kw)
    perm = model.get_permutation_scores("type", write=False, seed=seed)
    out = {}
    for w in ("posterior", "pi"):
        draws = model.get_velocity(n_samples=N_DRAWS, return_samples=True, seed=seed, state_weights=w)
        out[w] = (model.get_directional_uncertainty(n_samples=N_DRAWS, write=False, seed=seed, state_weights=w),
                  draws)
    return out, perm, len(model.history["epoch"])


def _fit_velovi(adata, size: dict, seed: int):
    import scvi
    from velovi import VELOVI

    scvi.settings.seed = seed
    VELOVI.setup_anndata(adata, spliced_layer="Ms", unspliced_layer="Mu")
    model = VELOVI(adata)
    kw = {k: size[k] for k in ("max_epochs", "batch_size") if size[k] is not None}
    model.train(early_stopping=size["max_epochs"] is None, enable_progress_bar=False, accelerator="cpu",
                devices=1, **kw)
    stats, _ = model.get_directional_uncertainty(n_samples=N_DRAWS, n_jobs=1)
    draws = np.asarray(model.get_velocity(n_samples=N_DRAWS, return_mean=False, return_numpy=True, clip=False))
    perm, _ = model.get_permutation_scores(labels_key="type")
    return {"velovi": (stats, draws)}, perm, len(model.history["elbo_train"])


def flags(tool: str, size_name: str, seeds: list[int] | None, threads: int = 1) -> None:
    """Fit each construction and seed with ``tool``; append the AUCs to ``flags_<tool>.json``."""
    from benchmarks.common import quiet, set_threads

    set_threads(threads)
    quiet()
    size = SIZES[size_name]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"flags_{tool}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for name in CONSTRUCTS:
        for seed in seeds or size["seeds"]:
            adata, cells, genes = construct(name, seed, size["n_cells"], size["n_genes"])
            t0 = time.time()
            readouts, perm, epochs = (_fit_velopyro if tool == "velopyro" else _fit_velovi)(adata, size, seed)
            for label, (stats, draws) in readouts.items():
                reader = tool if label == "velovi" else f"velopyro ({label})"
                rows = [r for r in rows if not (r["reader"] == reader and r["size"] == size_name
                                                and r["construct"] == name and r["seed"] == seed)]
                row = {"reader": reader, "size": size_name, "construct": name, "seed": seed, "epochs": epochs,
                       **flag_aucs(stats, perm, cells, genes)}
                if cells.any():
                    row["sign_flips"] = sign_flips(draws, cells)
                rows.append(row)
                print(json.dumps(row), f"{time.time() - t0:.0f} s", flush=True)
            path.write_text(json.dumps(rows, indent=1))


def flags_report() -> str:
    """Mean ± sd over seeds of every AUC, per size, construction and reader; written to ``flags.md``."""
    rows = [r for p in sorted(OUT_DIR.glob("flags_*.json")) for r in json.loads(p.read_text())]

    def ms(x: list[float]) -> str:
        x = np.asarray(x, float)
        return f"{x.mean():.2f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.2f}"

    lines = ["# Do the uncertainty read-outs flag data without kinetics?", "",
             "Written by `python -m benchmarks.uncertainty_groundtruth flags-report` from the rows of `flags --tool "
             "velopyro|velovi --size small|large` (see the module docstring for the constructions). ROC AUC, mean "
             "± sd over seeds (n); 0.5: no better than chance, 1: every changed cell (or gene-type pair) ranked "
             "above every other. Cell statistics: the changed type's cells ranked above the rest by each "
             "uncertainty statistic (below, for the mean cosine). Permutation: the changed pairs ranked below "
             "the rest by the permutation score. Sign flips: the share of posterior draws whose velocity sign "
             "differs from that of the mean velocity, averaged over genes and over the changed type's cells / the "
             "other cells (how often the posterior reverses a gene's direction).", ""]
    for size in SIZES:
        for name in CONSTRUCTS:
            rs = [r for r in rows if r["size"] == size and r["construct"] == name]
            if not rs:
                continue
            cols = list(STATS) if name != "shuffled_genes" else []
            lines += [f"## {name}, {size} ({SIZES[size]['n_cells']} cells x {SIZES[size]['n_genes']} genes)", "",
                      "| reader | n | " + " | ".join(f"`{c}`" for c in cols) + (" | " if cols else "")
                      + "permutation score | epochs |" + (" sign flips: changed / other cells |" if cols else ""),
                      "|---|---|" + "---|" * (len(cols) + 2 + bool(cols))]
            for reader in sorted({r["reader"] for r in rs}):
                sub = [r for r in rs if r["reader"] == reader]
                cells = [ms([r["cells"][c] for r in sub]) for c in cols]
                epochs = sorted({r["epochs"] for r in sub})
                flips = [r["sign_flips"] for r in sub if "sign_flips" in r]
                flip = (f" {ms([f['changed'] for f in flips])} / {ms([f['other'] for f in flips])} |"
                        if cols and len(flips) == len(sub) else (" - |" if cols else ""))
                lines.append(f"| {reader} | {len(sub)} | " + " | ".join(cells) + (" | " if cols else "")
                             + f"{ms([r['permutation'] for r in sub])} | {epochs[0]}-{epochs[-1]} |" + flip)
            lines.append("")
    md = "\n".join(lines) + "\n"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "flags.md").write_text(md)
    return md


LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
SIM_SIZE = {"n_cells": 1000, "n_genes": 100}  # as benchmarks/direction.py


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
    import velopyro
    from benchmarks import data
    from velopyro._rng import seeded
    from velopyro.uncertainty import interval_coverage, velocity_quantiles

    adata = (data.scvelo_simulation if simulator == "scvelo" else data.velopyro_simulation)(**SIM_SIZE)
    truth = data.ground_truth(adata)
    t0 = time.time()
    model = velopyro.VeloPyro(adata.copy())
    model.fit(progress_bar=False, seed=seed)
    fit_s = time.time() - t0
    rates = model.get_rates()
    tv = np.asarray(truth.velocity, dtype=np.float64)
    row = {"simulator": simulator, "seed": seed, "n_epochs": len(model.history["epoch"]),
           "converged": bool(model.history.get("converged", True)), "fit_seconds": round(fit_s, 1),
           "n_samples": n_samples}
    # the same fit read with get_velocity's state weights (pi: the keys at the top level) and the data
    # posterior's (under "posterior")
    for weights in ("pi", "posterior"):
        with seeded(seed):
            q = velocity_quantiles(model, _quantiles(), n_samples=n_samples, state_weights=weights)
        mean = model.get_velocity(n_samples=n_samples, seed=seed, state_weights=weights)
        out = row if weights == "pi" else row.setdefault("posterior", {})
        scales = alignments(mean, tv, np.asarray(rates["gamma"], np.float64), truth.gamma)
        for name, scale in scales.items():
            out[name] = coverage_scores(q, mean, tv, scale)
            out[name]["scale_median"] = float(np.median(scale))
        # an over-confident interval (the 90% interval halved around its centre) must cover less
        i90 = LEVELS.index(0.9)
        lo90, hi90 = q[i90].astype(np.float64), q[len(q) - 1 - i90].astype(np.float64)
        mid = 0.5 * (lo90 + hi90)
        out["rate"]["shrunk_half_pairs_90"] = interval_coverage(0.5 * (lo90 + mid), 0.5 * (hi90 + mid),
                                                                tv * scales["rate"][None])
    return row


def summarise(rows: list[dict]) -> str:
    """Markdown table: mean and sd over seeds of each coverage number."""
    lines = ["# Posterior interval coverage of velocity against the simulated truth", "",
             "`python -m benchmarks.uncertainty_groundtruth coverage` (velopyro defaults, "
             f"{SIM_SIZE['n_cells']} cells x {SIM_SIZE['n_genes']} genes per simulator, 100 posterior draws). "
             "Mean ± sd over seeds. `raw`: truth as simulated; `rate`: truth x fitted/true gamma per gene; "
             "`spread`: truth x sd(posterior mean) / sd(truth) per gene. State weights: `pi` (the default of "
             "`get_velocity` and `get_velocity_interval`), `posterior` (p(k | data), the default of "
             "`get_directional_uncertainty`), both read from the same fits.", ""]
    for sim, weights in [(sim, w) for sim in sorted({r["simulator"] for r in rows}) for w in ("pi", "posterior")]:
        rs = [r if weights == "pi" else r[weights] for r in rows if r["simulator"] == sim
              and (weights == "pi" or weights in r)]
        if not rs:
            continue
        epochs = [r["n_epochs"] for r in rows if r["simulator"] == sim]
        lines += [f"## {sim} simulator, state weights `{weights}` ({len(rs)} seeds; epochs {epochs})", "",
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
    parser.add_argument("part", choices=["flags", "flags-report", "coverage"])
    parser.add_argument("--tool", choices=["velopyro", "velovi"], default="velopyro")
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--simulators", nargs="+", default=["scvelo", "velopyro"], choices=["scvelo", "velopyro"])
    args = parser.parse_args(argv)
    if args.part == "flags":
        flags(args.tool, args.size, args.seeds, args.threads)
    elif args.part == "flags-report":
        print(flags_report())
    else:
        coverage(args.seeds or [0, 1, 2], args.simulators)


if __name__ == "__main__":
    main()
