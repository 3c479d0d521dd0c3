"""The development suite for velocity direction: many cases, both tools, >= 3 seeds, no labels in any rule.

Each row is a data set; each run one (row, tool, variant, seed) fit, written as a JSON row to
``benchmarks/results/suite/runs/``. ``report`` writes ``benchmarks/results/suite/results.md`` (mean ± sd over
seeds, every row, both tools, and one summary line per row: velopyro minus velovi).

Usage::

    python -m benchmarks.suite run --rows scvelo_transient branching --seeds 0 1 2
    python -m benchmarks.suite report

Rows (``ROWS``):

- ``pancreas``: the velovi tutorial's preprocessing of the bundled pancreas data (371 genes); its runs are those
  of :mod:`benchmarks.direction` (the same code path, the same fits), read from
  ``benchmarks/results/direction/runs/``;
- ``pancreas_pp``: velopyro's own ``pp.preprocess`` on the same raw data;
- ``pancreas_600``: 600 random cells, preprocessed from raw as ``pancreas``;
- ``pancreas_gap``: 80% of the Ngn3-high EP cells removed (a gap in the trajectory), of a 1,500-cell subsample;
- ``pancreas_no_alpha``: the Alpha lineage removed, of a 1,500-cell subsample;
- ``scvelo``: scVelo's simulator, 1,000 cells x 100 genes (runs of :mod:`benchmarks.direction`);
- ``scvelo_noisy``: the same simulator at three times the noise, 500 x 50;
- ``scvelo_early`` / ``scvelo_late``: switch times in the first / last fifth of the window, 500 x 50;
- ``scvelo_transient``: rates a fifth as fast, so most genes never reach steady state in the window (the case
  where a steady-state slope is biased), 500 x 50;
- ``branching``: :func:`velopyro.datasets.simulate_branching`, one progenitor and two lineages with
  lineage-specific programs, integrated numerically (not velopyro's closed form), 600 x 60;
- ``velopyro``: velopyro's own simulator, 1,000 x 100 (runs of :mod:`benchmarks.direction`).

Candidates: velovi 0.3.1 (``default``) and velopyro from each rate start (``constant_init``, the library's default
``rate_init="auto"``, and ``steady_state_init``). ``select`` is the label-free rule of ``rate_init="select"``
(an option since the default fits once): per seed, the velopyro
fit with the lower validation loss (-ELBO per cell on the held-out cells) of the two starts. For the rows whose
runs come from :mod:`benchmarks.direction`, which did not record the validation loss, the rule is applied to
the held-out log-likelihood of the same held-out cells (the same quantity without the KL terms); the report
says which criterion each row used and, for the other rows, how often the two criteria agree.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import CACHE_DIR, RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "suite"
RUNS = OUT / "runs"
DIRECTION_RUNS = RESULTS_DIR / "direction" / "runs"
ARRAYS = CACHE_DIR / "suite"

#: velopyro variants (beside :data:`CANDIDATES`) read from the direction benchmark's runs.
EXTRA_FROM_DIRECTION = (("velopyro", "collapsed"), ("velopyro", "conditional"))
#: Rows read from :mod:`benchmarks.direction` (dataset name there).
FROM_DIRECTION = {"pancreas": "pancreas", "scvelo": "scvelo", "velopyro": "velopyro"}
PANCREAS_ROWS = ("pancreas", "pancreas_pp", "pancreas_600", "pancreas_gap", "pancreas_no_alpha")
SIM_ROWS = ("scvelo", "scvelo_noisy", "scvelo_early", "scvelo_late", "scvelo_transient", "branching", "velopyro")
ROWS = PANCREAS_ROWS + SIM_ROWS
CANDIDATES = (("velovi", "default"), ("velopyro", "constant_init"), ("velopyro", "steady_state_init"))
SIM_SIZE = {"n_cells": 500, "n_genes": 50}


def _name(row: str, tool: str, variant: str, seed: int) -> str:
    return f"{row}_{tool}_{variant}_s{seed}"


# ---- data ------------------------------------------------------------------------------------------
def _pancreas_from_raw(keep, own_pp: bool = False):
    """The pancreas cells ``keep`` (a function of the raw AnnData returning a boolean mask) preprocessed from
    the raw counts as :func:`benchmarks.data.pancreas` does (velovi's tutorial), or by ``velopyro.pp``."""
    import anndata as ad
    import scanpy as sc

    from benchmarks.data import PANCREAS_PATH

    adata = ad.read_h5ad(PANCREAS_PATH)
    adata = adata[keep(adata)].copy()
    for key in ("spliced", "unspliced"):  # the raw counts, for the count likelihoods' rows
        adata.layers[f"raw_{key}"] = adata.layers[key].copy()
    if own_pp:
        import velopyro

        velopyro.pp.preprocess(adata)
    else:
        import scvelo as scv
        from velovi import preprocess_data

        scv.pp.filter_and_normalize(adata, min_shared_counts=30)
        sc.pp.log1p(adata)
        sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat")
        scv.pp.moments(adata, n_pcs=30, n_neighbors=30)
        adata = preprocess_data(adata, spliced_layer="Ms", unspliced_layer="Mu")
        del adata.layers["velocity"]
    for key in ("Ms", "Mu"):
        x = adata.layers[key]
        adata.layers[key] = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    sc.tl.umap(adata, random_state=0)
    return adata


def _subsample(adata, n: int, seed: int = 0) -> np.ndarray:
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[np.random.default_rng(seed).choice(adata.n_obs, size=min(n, adata.n_obs), replace=False)] = True
    return mask


def _gap(adata) -> np.ndarray:
    mask = _subsample(adata, 1500)
    ngn3 = np.flatnonzero(mask & (adata.obs["clusters"].astype(str).to_numpy() == "Ngn3 high EP"))
    drop = np.random.default_rng(1).choice(ngn3, size=int(0.8 * ngn3.size), replace=False)
    mask[drop] = False
    return mask


def _no_alpha(adata) -> np.ndarray:
    return _subsample(adata, 1500) & (adata.obs["clusters"].astype(str).to_numpy() != "Alpha")


def _simulation(row: str):
    from benchmarks import data

    if row == "scvelo":
        return data.scvelo_simulation(n_cells=1000, n_genes=100)
    if row == "velopyro":
        return data.velopyro_simulation(n_cells=1000, n_genes=100)
    if row == "branching":
        return data.branching_simulation(n_cells=600, n_genes=60)
    options = {"scvelo_noisy": {"noise_level": 3.0}, "scvelo_early": {"switch_range": (0.05, 0.2)},
               "scvelo_late": {"switch_range": (0.8, 0.95)}, "scvelo_transient": {"rate_scale": 0.2}}[row]
    return data.scvelo_simulation(**SIM_SIZE, **options)


def dataset(row: str):
    """The AnnData of one row (cached under ``benchmarks/cache``) and its ground truth (None on real data)."""
    from benchmarks import data

    if row == "pancreas":
        return data.pancreas(), None
    if row in PANCREAS_ROWS:
        build = {"pancreas_pp": lambda: _pancreas_from_raw(lambda a: np.ones(a.n_obs, bool), own_pp=True),
                 "pancreas_600": lambda: _pancreas_from_raw(lambda a: _subsample(a, 600)),
                 "pancreas_gap": lambda: _pancreas_from_raw(_gap),
                 "pancreas_no_alpha": lambda: _pancreas_from_raw(_no_alpha)}[row]
        return data.cached(f"suite_{row}", {"version": 2}, build), None
    adata = _simulation(row)
    return adata, data.ground_truth(adata)


# ---- runs ------------------------------------------------------------------------------------------
#: velopyro variants of the suite beyond :data:`benchmarks.direction.VARIANTS`: the default rule itself (to check
#: that it reproduces the candidate it picks) and the count likelihoods on the raw counts of the same genes.
COUNT_LAYERS = {"spliced_layer": "raw_spliced", "unspliced_layer": "raw_unspliced"}
SUITE_VARIANTS = {
    "select_fit": {"init": {"rate_init": "select"}},
    "poisson": {"init": {"likelihood": "poisson", "rate_init": "select", **COUNT_LAYERS}},
    "negative_binomial": {"init": {"likelihood": "negative_binomial", "rate_init": "select", **COUNT_LAYERS}},
}
COUNT_VARIANTS = ("poisson", "negative_binomial")


def _adapter(tool: str, variant: str):
    if tool == "velovi":
        from benchmarks.run_velovi import VeloviAdapter

        return VeloviAdapter(n_samples=25)
    from benchmarks.direction import VARIANTS
    from benchmarks.run_velopyro import VelopyroAdapter

    spec = {**VARIANTS, **SUITE_VARIANTS}[variant]
    return VelopyroAdapter(n_samples=25, fit_kwargs=spec.get("fit"), init_kwargs=spec.get("init"),
                           **spec.get("adapter", {}))


def _transitions(adata) -> list[tuple[str, str]]:
    from benchmarks.metrics import PANCREAS_TRANSITIONS

    if "transitions" in adata.uns:
        return [tuple(map(str, t)) for t in adata.uns["transitions"]]
    present = set(adata.obs["clusters"].astype(str))
    return [t for t in PANCREAS_TRANSITIONS if t[0] in present and t[1] in present]


def _direction(adata, v, lt, vkey: str) -> dict:
    """CBDir per transition and mean, ICVCoh: :func:`benchmarks.metrics.direction_scores` on any row."""
    from benchmarks import metrics

    vt = metrics.tutorial_velocity(v, lt)
    emb = metrics.velocity_embedding(adata, vt, vkey)
    nbrs = metrics.knn_lists(adata)
    labels = adata.obs["clusters"].to_numpy()
    cb = metrics.cross_boundary_correctness(labels, adata.obsm["X_umap"], emb, nbrs, _transitions(adata))
    return {"cbdir": cb, "icvcoh": metrics.inner_cluster_coherence(labels, vt, nbrs)["mean"]}


def _ensure_graph(adata) -> None:
    """Simulations carry no kNN graph: build one on PCA of Ms (for the velocity graph and the metrics)."""
    if "distances" in adata.obsp:
        return
    import scanpy as sc

    sc.pp.pca(adata, n_comps=min(30, adata.n_vars - 1), random_state=0)
    sc.pp.neighbors(adata, n_neighbors=30, random_state=0)
    if "X_umap" not in adata.obsm:
        sc.tl.umap(adata, random_state=0)


def run_one(row: str, tool: str, variant: str, seed: int) -> dict:
    """Fit one candidate on one row at one seed; score direction (rows with clusters) and truth (simulations)."""
    from benchmarks import metrics
    from benchmarks.common import layer_array

    adata, truth = dataset(row)
    val = None
    vpath = ARRAYS / f"{_name(row, 'velovi', 'default', seed)}.npz"
    if tool != "velovi" and vpath.exists():  # hold out velovi's validation cells
        val = np.load(vpath)["validation_indices"]
    adapter = _adapter(tool, variant)
    t0 = time.time()
    rec = adapter.fit(adata.copy(), row, max_epochs=500, early_stopping=True, seed=seed, validation_indices=val)
    fit_s = time.time() - t0
    v, lt, rates = adapter.velocity(), adapter.latent_time(), adapter.rates()
    u, s = layer_array(adata, "Mu"), layer_array(adata, "Ms")
    vidx = adapter.validation_indices
    # the Normal mixture's held-out log-likelihood of Ms/Mu; count fits are compared by their own loss instead
    ll = ({"mean_per_cell": None} if variant in COUNT_VARIANTS
          else metrics.heldout_loglik(adapter.state_mean_draws(vidx, n_samples=10), u[vidx], s[vidx]))
    out = {"row": row, "tool": tool, "variant": variant, "seed": seed, "n_epochs": rec.n_epochs,
           "fit_seconds": fit_s, "heldout_loglik_per_cell": ll["mean_per_cell"],
           "same_validation_cells_as_velovi": val is not None}
    if tool == "velopyro":
        hist = adapter.model.history
        out["rate_init"] = hist.get("rate_init")
        out["validation_loss"] = float(hist["best_validation_loss"]) if "best_validation_loss" in hist else float(
            np.asarray(hist["validation_loss"])[list(hist["epoch"]).index(hist["best_epoch"])])
    if "clusters" in adata.obs:
        _ensure_graph(adata)
        out.update(_direction(adata, np.maximum(v, -s), lt, f"velocity_{tool}_{variant}_{seed}"))
    if truth is not None:
        lts = metrics.latent_time_scores(lt, truth.time, truth.cell_time)
        out["latent_time_spearman"] = lts["gene_median"]
        out["latent_time_spearman_cell"] = lts["cell"]
        out["velocity_sign_accuracy"] = metrics.velocity_sign_accuracy(v, truth.velocity)["sign_accuracy"]
        out["gamma_over_beta_spearman"] = metrics.rate_ratio_scores(rates["beta"], rates["gamma"],
                                                                    truth.ratio)["spearman"]
    ARRAYS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ARRAYS / f"{_name(row, tool, variant, seed)}.npz", velocity=v.astype(np.float32),
                        latent_time=lt.astype(np.float32), validation_indices=np.asarray(vidx),
                        **{f"rate_{k}": np.asarray(x) for k, x in rates.items()})
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{_name(row, tool, variant, seed)}.json").write_text(json.dumps(out, indent=1))
    return out


# ---- report ----------------------------------------------------------------------------------------
def load_runs() -> list[dict]:
    """Every run of the suite, the direction benchmark's rows included (renamed to their suite row)."""
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    have = {(r["row"], r["tool"], r["variant"], r["seed"]) for r in runs}
    for row, ds in FROM_DIRECTION.items():
        for p in sorted(DIRECTION_RUNS.glob(f"{ds}_*.json")):
            r = json.loads(p.read_text())
            if r["dataset"] != ds or (r["tool"], r["variant"]) not in (*CANDIDATES, *EXTRA_FROM_DIRECTION):
                continue
            if (row, r["tool"], r["variant"], r["seed"]) in have:
                continue
            r = {**r, "row": row, "from": "benchmarks.direction"}
            r.pop("dataset")
            runs.append(r)
    return runs


def select(runs: list[dict]) -> tuple[list[dict], dict]:
    """The ``select`` rule per (row, seed): of the two velopyro starts, the lower validation loss (or, where it
    was not recorded, the higher held-out log-likelihood). Returns the chosen runs and, per row, the
    criterion used, the starts chosen and how often the two criteria agree."""
    by = {}
    for r in runs:
        if r["tool"] == "velopyro" and r["variant"] in ("constant_init", "steady_state_init"):
            by.setdefault((r["row"], r["seed"]), {})[r["variant"]] = r
    chosen, info = [], {}
    for (row, _seed), pair in sorted(by.items()):
        if len(pair) < 2:
            continue
        c, ss = pair["constant_init"], pair["steady_state_init"]
        has_val = "validation_loss" in c and "validation_loss" in ss
        by_ll = c if c["heldout_loglik_per_cell"] >= ss["heldout_loglik_per_cell"] else ss
        pick = (c if c["validation_loss"] <= ss["validation_loss"] else ss) if has_val else by_ll
        d = info.setdefault(row, {"criterion": "validation loss" if has_val else "held-out log-likelihood",
                                  "picked": [], "agree": 0, "n": 0})
        d["picked"].append(pick["variant"].replace("_init", ""))
        d["n"] += 1
        d["agree"] += int(pick is by_ll)
        # the default trains both starts: its epochs and fit time are the two fits'
        chosen.append({**pick, "variant": "select", "n_epochs_both": c["n_epochs"] + ss["n_epochs"],
                       "fit_seconds_both": c["fit_seconds"] + ss["fit_seconds"]})
    return chosen, info


def _stats(xs) -> tuple[float, float, int] | None:
    a = np.asarray([x for x in xs if x is not None and np.isfinite(x)], dtype=float)
    if a.size == 0:
        return None
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size)


def _fmt(st) -> str:
    return "-" if st is None else f"{st[0]:.3f} ± {st[1]:.3f} (n={st[2]})"


MEASURES = (("CBDir mean", lambda r: r.get("cbdir", {}).get("mean")), ("ICVCoh", lambda r: r.get("icvcoh")),
            ("velocity sign accuracy", lambda r: r.get("velocity_sign_accuracy")),
            ("latent time Spearman (cell)", lambda r: r.get("latent_time_spearman_cell")),
            ("latent time Spearman (gene median)", lambda r: r.get("latent_time_spearman")),
            ("gamma/beta Spearman", lambda r: r.get("gamma_over_beta_spearman")),
            ("held-out log-lik / cell", lambda r: r.get("heldout_loglik_per_cell")),
            ("epochs (select: the kept fit's)", lambda r: r.get("n_epochs")),
            ("epochs trained (select: both starts)", lambda r: r.get("n_epochs_both", r.get("n_epochs"))))
#: The measures of the defaults rule: no row may prefer velovi by more than one sd on these.
KEY_MEASURES = ("CBDir mean", "velocity sign accuracy", "latent time Spearman (cell)")
#: velopyro's default as the library runs it (``rate_init="auto"``: the constant start, one fit)
DEFAULT = ("velopyro", "constant_init")
COLUMNS = (("velovi", "default"), ("velopyro", "constant_init"), ("velopyro", "steady_state_init"),
           ("velopyro", "select"), ("velopyro", "collapsed"), ("velopyro", "conditional"), ("velopyro", "poisson"),
           ("velopyro", "negative_binomial"))


def report() -> str:
    """Aggregate the runs into ``results.md`` / ``results.json``."""
    runs = load_runs()
    chosen, info = select(runs)
    runs_all = runs + chosen
    groups: dict[tuple, list[dict]] = {}
    for r in runs_all:
        groups.setdefault((r["row"], r["tool"], r["variant"]), []).append(r)
    head = ["velovi", "velopyro constant start (default)", "velopyro steady-state start", "velopyro select",
            "velopyro pi integrated out (collapsed)", "velopyro pi(z) prior (conditional)",
            "velopyro Poisson (counts)",
            "velopyro negative binomial (counts)"]
    lines = ["# Development suite: velocity direction, velopyro beside velovi 0.3.1", "",
             "`python -m benchmarks.suite run` then `python -m benchmarks.suite report` (mean ± sd over seeds, "
             "sd with ddof=1). velopyro's default (`rate_init=\"auto\"`) is the constant start, one fit; `select` "
             "is `rate_init=\"select\"`: per seed, the start (constant or steady-state) with the better validation "
             "objective, two fits. `collapsed` is `pi_guide=\"collapsed\"` with the default start: pi integrated out "
             "(exact), velocity weighted by the state head's pi(z); its held-out log-likelihood also reads pi(z), "
             "as velovi's reads q(pi | z); its validation loss is a different bound (no Dirichlet KL). `conditional` "
             "is `pi_guide=\"conditional\"`: pi integrated out under a learned prior mean pi(z) (a different model). "
             "No rule "
             "uses cell-type labels.", ""]
    summary = ["## Summary: velopyro default (constant start) minus velovi (mean over seeds; * = velovi better by "
               "more than one sd)",
               "", "| row | " + " | ".join(KEY_MEASURES) + " | select: starts picked (criterion) |",
               "|---|" + "---|" * (len(KEY_MEASURES) + 1)]
    detail = []
    summary_json = {}
    for row in ROWS:
        cols = [groups.get((row, t, v), []) for t, v in COLUMNS]
        if not any(cols):
            continue
        cells = []
        summary_json[row] = {}
        for m, get in ((m, g) for m, g in MEASURES if m in KEY_MEASURES):
            a, b = _stats(get(r) for r in cols[COLUMNS.index(DEFAULT)]), _stats(get(r) for r in cols[0])
            if a is None or b is None:
                cells.append("-")
                continue
            worse = b[0] - a[0] > max(a[1], b[1])
            cells.append(f"{a[0] - b[0]:+.3f}{' *' if worse else ''}")
            summary_json[row][m] = {"delta": a[0] - b[0], "velovi_better_by_more_than_sd": bool(worse)}
        i = info.get(row, {})
        picks = ", ".join(i.get("picked", [])) or "-"
        agree = f"; agrees with held-out log-lik {i['agree']}/{i['n']}" if i.get("criterion") == "validation loss" \
            else ""
        summary.append(f"| {row} | " + " | ".join(cells) + f" | {picks} ({i.get('criterion', '-')}{agree}) |")
        detail += [f"## {row}", "", "| measure | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        if any("cbdir" in r for c in cols for r in c):
            trans = list(next(r for c in cols for r in c if "cbdir" in r)["cbdir"]["per_transition"])
            for tr in trans:
                detail.append(f"| {tr} | " + " | ".join(
                    _fmt(_stats(r.get("cbdir", {}).get("per_transition", {}).get(tr) for r in c)) for c in cols) + " |")
        for m, get in MEASURES:
            sts = [_stats(get(r) for r in c) for c in cols]
            if all(st is None for st in sts):
                continue
            detail.append(f"| {m} | " + " | ".join(_fmt(st) for st in sts) + " |")
        src = {r.get("from") for c in cols for r in c} - {None}
        if src:
            detail.append("")
            detail.append(f"Runs read from `{', '.join(sorted(src))}` (`benchmarks/results/direction/runs/`).")
        detail.append("")
    check = []
    for r in runs:  # the rule as the library runs it, beside the candidate the report picked from the two fits
        if r["variant"] != "select_fit":
            continue
        pick = next((c for c in chosen if (c["row"], c["seed"]) == (r["row"], r["seed"])), None)
        if pick is not None:
            same = all(r.get(k) == pick.get(k) for k in ("velocity_sign_accuracy", "latent_time_spearman_cell",
                                                         "heldout_loglik_per_cell", "n_epochs"))
            check.append(f"- {r['row']} seed {r['seed']}: `rate_init=\"select\"` kept {r.get('rate_init')}, "
                         f"{'identical to' if same else 'DIFFERENT from'} the {pick.get('rate_init') or '?'} "
                         "candidate's fit")
    if check:
        check = ["## The default as the library runs it", ""] + check + [""]
    text = "\n".join(lines + summary + [""] + check + detail)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps({"summary": summary_json, "select": info, "runs": runs_all},
                                                 indent=1))
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line: ``run`` fits every candidate on the given rows and seeds (velovi first, so that velopyro
    holds out the same cells), ``report`` aggregates."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rows", nargs="+", default=[x for x in ROWS if x not in FROM_DIRECTION], choices=ROWS)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--tools", nargs="+", default=["velovi", "velopyro"], choices=("velovi", "velopyro"))
    r.add_argument("--variants", nargs="+", default=["constant_init", "steady_state_init"])
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--force", action="store_true", help="refit runs whose JSON exists")
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "report":
        print(report())
        return
    set_threads(args.threads)
    from benchmarks.common import quiet

    quiet()
    for row in args.rows:
        for seed in args.seeds:
            todo = [("velovi", "default")] if "velovi" in args.tools else []
            todo += [("velopyro", v) for v in args.variants] if "velopyro" in args.tools else []
            for tool, variant in todo:
                if (RUNS / f"{_name(row, tool, variant, seed)}.json").exists() and not args.force:
                    continue
                out = run_one(row, tool, variant, seed)
                print(json.dumps({k: out[k] for k in out if k not in ("cbdir",)}),
                      out.get("cbdir", {}).get("mean"), flush=True)


if __name__ == "__main__":
    main()
