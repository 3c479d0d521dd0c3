"""The analysis after the fit on pancreas: velopyro (defaults) beside velovi 0.3.1.

Three stages, each rerunnable on its own:

``fit``
    Fit one tool at one seed on :func:`benchmarks.data.pancreas` (the preprocessing of
    :mod:`benchmarks.direction`: velovi's tutorial), with the adapters of :mod:`benchmarks.direction` (500
    epochs, early stopping, AdamW 1e-2). Then, from that fit: the velocity (mean of 25 draws) and its variance
    over the draws, each tool's intrinsic directional uncertainty (50 draws; velopyro's
    ``get_directional_uncertainty``, velovi's ``get_directional_uncertainty``) and permutation scores
    (``labels_key="clusters"``; velopyro's and velovi's ``get_permutation_scores``). Arrays go to
    ``benchmarks/cache/pancreas_analysis/``, the per-cluster / per-cell-type summaries to
    ``benchmarks/results/pancreas_analysis/``. velovi's stage runs in an environment with velovi
    (``.venv-bench``); velopyro's in any with velopyro.
``cellrank``
    CellRank 2 on each tool's velocity: ``VelocityKernel`` (deterministic, and Monte Carlo with the
    draws' variance) 0.8 + ``ConnectivityKernel`` 0.2, GPCCA macrostates and terminal states, fate
    probabilities. Runs on the fits of ``fit`` and on the velocity arrays of the three direction-benchmark
    seeds per tool (``benchmarks/cache/direction/pancreas_{velovi_default,velopyro_steady_state_init}_s*.npz``
    written by ``python -m benchmarks.direction run``; ``steady_state_init`` is velopyro's default start for
    the Normal likelihood, ``rate_init="auto"``). Needs cellrank (the ``cellrank`` extra).
``report``
    Aggregates the JSON rows into ``results.md``.

Usage::

    python -m benchmarks.pancreas_analysis fit --tool velopyro --seed 0
    .venv-bench/bin/python -m benchmarks.pancreas_analysis fit --tool velovi --seed 0
    python -m benchmarks.pancreas_analysis cellrank        # in an environment with velopyro[cellrank]
    python -m benchmarks.pancreas_analysis report

Timings are not reported: the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import CACHE_DIR, RESULTS_DIR, quiet, set_threads

OUT = RESULTS_DIR / "pancreas_analysis"
ARRAYS = CACHE_DIR / "pancreas_analysis"
DIRECTION_ARRAYS = CACHE_DIR / "direction"
LABELS = "clusters"
#: the terminal cell types of pancreatic endocrinogenesis in this data set (Bastidas-Ponce et al. 2019)
TERMINAL_TYPES = ("Alpha", "Beta", "Delta", "Epsilon")
N_VELOCITY_DRAWS = 25
N_UNCERTAINTY_DRAWS = 50
#: velovi 0.3.1's get_permutation_scores scores the first 200 cells of each type; velopyro all, or max_cells
VELOVI_PERMUTATION_CELLS = 200
STAT_KEYS = ("directional_cosine_sim_variance", "directional_cosine_sim_difference", "directional_cosine_sim_mean",
             "directional_variance", "directional_difference")


def _velopyro_outputs(adapter, seed: int) -> dict:
    model = adapter.model
    draws = model.get_velocity(n_samples=N_VELOCITY_DRAWS, return_samples=True, seed=seed)
    lt = model.get_latent_time(n_samples=N_VELOCITY_DRAWS, seed=seed)
    unc = model.get_directional_uncertainty(n_samples=N_UNCERTAINTY_DRAWS, write=False, seed=seed)
    unc_pi = model.get_directional_uncertainty(n_samples=N_UNCERTAINTY_DRAWS, write=False, seed=seed,
                                               state_weights="pi")
    perm = model.get_permutation_scores(LABELS, write=False, seed=seed)
    perm_cap = model.get_permutation_scores(LABELS, write=False, seed=seed, max_cells=VELOVI_PERMUTATION_CELLS)
    return {"draws": draws, "latent_time": lt, "uncertainty": unc, "uncertainty_pi": unc_pi, "permutation": perm,
            "permutation_capped": perm_cap}


def _velovi_outputs(adapter, seed: int) -> dict:
    import scvi

    model = adapter.model
    scvi.settings.seed = seed
    draws = np.asarray(model.get_velocity(n_samples=N_VELOCITY_DRAWS, return_mean=False, return_numpy=True,
                                          clip=False, velo_statistic="mean"), dtype=np.float32)
    lt = np.asarray(model.get_latent_time(n_samples=N_VELOCITY_DRAWS, time_statistic="mean", return_numpy=True))
    unc, _ = model.get_directional_uncertainty(n_samples=N_UNCERTAINTY_DRAWS, n_jobs=1)
    perm, _ = model.get_permutation_scores(labels_key=LABELS)
    return {"draws": draws, "latent_time": lt, "uncertainty": unc, "permutation": perm.astype(float)}


def _save(adapter, tool: str, seed: int) -> None:
    path = ARRAYS / (f"{tool}_s{seed}_model")
    if tool == "velovi":
        adapter.model.save(str(path), overwrite=True)
    else:
        adapter.model.save(path, overwrite=True)


def _load(adapter, adata, tool: str, seed: int):
    """The saved fit of ``fit`` (``--reuse``): the outputs are recomputed without refitting."""
    path = ARRAYS / (f"{tool}_s{seed}_model")
    adapter.adata = adata
    if tool == "velovi":
        from velovi import VELOVI

        VELOVI.setup_anndata(adata, spliced_layer="Ms", unspliced_layer="Mu")
        adapter.model = VELOVI.load(str(path), adata)
        adapter.model.module.eval()
    else:
        import velopyro

        adapter.model = velopyro.VeloPyro.load(path, adata)
    return adapter.model


def fit(tool: str, seed: int, max_epochs: int = 500, reuse: bool = False) -> dict:
    """Fit ``tool`` at ``seed`` and write its velocity, uncertainty and permutation scores."""
    from benchmarks import data
    from benchmarks.direction import _adapter

    adata = data.pancreas()
    adapter = _adapter(tool, "default")
    ARRAYS.mkdir(parents=True, exist_ok=True)
    if reuse:
        model = _load(adapter, adata.copy(), tool, seed)
        hist = model.history
        n_epochs = len(hist["epoch"] if tool == "velopyro" else hist["elbo_train"])
    else:
        rec = adapter.fit(adata.copy(), "pancreas", max_epochs=max_epochs, early_stopping=True, seed=seed)
        n_epochs = rec.n_epochs
        _save(adapter, tool, seed)
    out = (_velovi_outputs if tool == "velovi" else _velopyro_outputs)(adapter, seed)
    draws = out["draws"]
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ARRAYS / f"{tool}_s{seed}.npz", velocity=draws.mean(0), velocity_var=draws.var(0),
                        latent_time=np.asarray(out["latent_time"], np.float32),
                        var_names=np.asarray(adata.var_names), obs_names=np.asarray(adata.obs_names))
    unc = out["uncertainty"][list(STAT_KEYS)]
    unc.index = adata.obs_names
    unc.to_csv(ARRAYS / f"{tool}_s{seed}_uncertainty.csv")
    perm = out["permutation"]
    perm.to_csv(OUT / f"permutation_{tool}_s{seed}.csv")
    row = {"tool": tool, "seed": seed, "n_epochs": n_epochs, "max_epochs": max_epochs,
           "uncertainty_by_cluster": _by_cluster(unc, adata.obs[LABELS]),
           "permutation_by_cell_type": _perm_summary(perm)}
    if "uncertainty_pi" in out:  # velopyro: the same draws read with get_velocity's state weights
        row["uncertainty_by_cluster_pi"] = _by_cluster(out["uncertainty_pi"][list(STAT_KEYS)], adata.obs[LABELS])
    if "permutation_capped" in out:  # velopyro: at most velovi's 200 cells per type
        out["permutation_capped"].to_csv(OUT / f"permutation_{tool}_s{seed}_max{VELOVI_PERMUTATION_CELLS}.csv")
        row["permutation_by_cell_type_capped"] = _perm_summary(out["permutation_capped"])
    (OUT / f"fit_{tool}_s{seed}.json").write_text(json.dumps(row, indent=1))
    return row


def _by_cluster(unc, labels) -> dict:
    """Median (and IQR) of each cell's directional statistics per cluster."""
    out = {}
    for ct in sorted(map(str, set(labels))):
        sub = unc[np.asarray(labels.astype(str)) == ct]
        out[ct] = {k: {"median": float(sub[k].median()), "q25": float(sub[k].quantile(0.25)),
                       "q75": float(sub[k].quantile(0.75))} for k in STAT_KEYS}
        out[ct]["n_cells"] = len(sub)
    return out


def _perm_summary(perm) -> dict:
    """Per cell type: the median permutation score over genes, and the share of genes above 2 (velovi's
    tutorial cut-off for a gene "dynamical" in a type)."""
    return {str(ct): {"median": float(np.nanmedian(perm[ct])), "frac_above_2": float(np.nanmean(perm[ct] > 2)),
                      "max": float(np.nanmax(perm[ct]))} for ct in perm.columns}


# --------------------------------------------------------------------------------------------------
# CellRank
# --------------------------------------------------------------------------------------------------

#: GPCCA protocol, the same for every velocity: Schur vectors, macrostates named by their majority cluster,
#: terminal states by CellRank's default stability criterion
N_SCHUR = 20
N_MACROSTATES = 12
N_MC_SAMPLES = 50


def _work_adata(adata, velocity: np.ndarray, var: np.ndarray | None):
    import anndata as ad

    work = ad.AnnData(X=adata.layers["Ms"].copy(), obs=adata.obs[[LABELS]].copy(), var=adata.var[[]].copy(),
                      layers={"Ms": adata.layers["Ms"], "velocity": np.asarray(velocity, np.float32)},
                      obsm={"X_umap": adata.obsm["X_umap"]},
                      obsp={k: adata.obsp[k] for k in ("distances", "connectivities")},
                      uns={"neighbors": adata.uns["neighbors"]})
    work.var["velocity_genes"] = True
    if var is not None:
        work.layers["velocity_var"] = np.asarray(var, np.float32)
    return work


def _cell_type(name: str) -> str:
    """``"Beta_2"`` -> ``"Beta"`` (CellRank suffixes macrostates that share a majority cluster)."""
    head, _, tail = str(name).rpartition("_")
    return head if head and tail.isdigit() else str(name)


def cellrank_one(adata, velocity: np.ndarray, var: np.ndarray | None = None) -> dict:
    """0.8 VelocityKernel + 0.2 ConnectivityKernel, GPCCA macrostates and terminal states, fate probabilities.

    ``var`` given: CellRank's Monte Carlo model with the velocity drawn from ``N(velocity, var)``
    (:func:`velopyro.tl.cellrank_velocity_kernel`); otherwise its deterministic model.
    """
    import cellrank as cr

    import velopyro

    work = _work_adata(adata, velocity, var)
    if var is None:
        vk = cr.kernels.VelocityKernel(work).compute_transition_matrix()
    else:
        vk = velopyro.tl.cellrank_velocity_kernel(work)
        vk.compute_transition_matrix(model="monte_carlo", n_samples=N_MC_SAMPLES, seed=0)
    ck = cr.kernels.ConnectivityKernel(work).compute_transition_matrix()
    g = cr.estimators.GPCCA(0.8 * vk + 0.2 * ck)
    g.compute_schur(n_components=N_SCHUR)
    failures = {}
    for n_states in (N_MACROSTATES, N_MACROSTATES - 1, N_MACROSTATES + 1):
        try:  # GPCCA can leave a macrostate without cells; then the nearest other count is tried (recorded)
            g.compute_macrostates(n_states=n_states, cluster_key=LABELS)
            break
        except ValueError as e:
            failures[n_states] = str(e).splitlines()[0]
    else:
        return {"macrostates": [], "macrostate_types": [], "macrostate_stability": {}, "terminal_states": [],
                "terminal_types": [], "found": [], "not_terminal_types_called_terminal": [],
                "n_macrostates": None, "macrostate_failures": failures}
    macro = [str(c) for c in g.macrostates.cat.categories]
    coarse = g.coarse_T
    stability = dict(zip(map(str, coarse.index), map(float, np.diag(np.asarray(coarse))), strict=True))
    row = {"macrostates": macro, "macrostate_types": sorted({_cell_type(c) for c in macro}),
           # the coarse-grained self-transition probability of each macrostate (CellRank's stability criterion
           # calls those above 0.96 terminal)
           "macrostate_stability": stability, "n_macrostates": n_states, "macrostate_failures": failures}
    g.predict_terminal_states(method="stability")
    term = [str(c) for c in g.terminal_states.cat.categories]
    types = sorted({_cell_type(c) for c in term})
    row.update({"terminal_states": term, "terminal_types": types,
                "found": [t for t in TERMINAL_TYPES if t in types],
                "not_terminal_types_called_terminal": [t for t in types if t not in TERMINAL_TYPES]})
    g.compute_fate_probabilities(solver="gmres", use_petsc=False)
    fp = g.fate_probabilities
    labels = np.asarray(adata.obs[LABELS].astype(str))
    ep = labels == "Ngn3 high EP"
    row["fate_probabilities_ngn3_high_ep"] = dict(zip(map(str, fp.names), map(float, np.asarray(fp)[ep].mean(0)),
                                                      strict=True))
    return row


def _tutorial(velocity: np.ndarray, latent_time: np.ndarray, ms: np.ndarray, var: np.ndarray | None = None):
    """velovi's tutorial velocity (clipped at -s, divided per gene by 20 / max time) and its variance."""
    from benchmarks.metrics import tutorial_velocity

    v = tutorial_velocity(np.maximum(velocity, -ms), latent_time)
    if var is None:
        return v, None
    gmax = np.asarray(latent_time, np.float64).max(0)
    scaling = 20.0 / np.where(gmax > 0, gmax, 20.0)
    return v, (np.asarray(var, np.float64) / scaling[None, :] ** 2).astype(np.float32)


def cellrank_all(only: str | None = None, force: bool = False) -> None:
    """CellRank on every available velocity: the direction benchmark's seeds, then the fits of ``fit``
    (``only``: the jobs whose name contains it)."""
    from benchmarks import data
    from benchmarks.common import layer_array

    adata = data.pancreas()
    ms = layer_array(adata, "Ms")
    OUT.mkdir(parents=True, exist_ok=True)
    jobs = []
    for tool, variant in (("velopyro", "steady_state_init"), ("velovi", "default")):
        for path in sorted(DIRECTION_ARRAYS.glob(f"pancreas_{tool}_{variant}_s*.npz")):
            jobs.append((tool, f"direction:{path.stem}", path, False))
    for path in sorted(ARRAYS.glob("*_s[0-9]*.npz")):
        tool = path.stem.split("_")[0]
        jobs.append((tool, f"fit:{path.stem}", path, False))
        jobs.append((tool, f"fit:{path.stem}", path, True))
    for tool, source, path, mc in jobs:
        name = f"cellrank_{source.replace(':', '_')}_{'monte_carlo' if mc else 'deterministic'}"
        dest = OUT / "cellrank" / f"{name}.json"
        if (dest.exists() and not force) or (only is not None and only not in name):
            continue
        arr = np.load(path, allow_pickle=True)
        if list(arr["var_names"]) != list(adata.var_names):
            raise RuntimeError(f"{path}: genes differ from benchmarks.data.pancreas()")
        v, var = _tutorial(arr["velocity"], arr["latent_time"], ms, arr["velocity_var"] if mc else None)
        row = {"tool": tool, "source": source, "model": "monte_carlo" if mc else "deterministic",
               **cellrank_one(adata, v, var)}
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(row, indent=1))
        print(name, row["terminal_types"], flush=True)


def _columns(fits: dict, key: str, variant_key: str, variant: str) -> list[tuple[str, dict]]:
    """One report column per fit (``key``), each followed by its variant (``variant_key``) where recorded."""
    cols = []
    for n in sorted(fits):
        cols.append((n, fits[n][key]))
        if variant_key in fits[n]:
            cols.append((f"{n} ({variant})", fits[n][variant_key]))
    return cols


def report() -> str:
    """``results.md``: terminal states side by side, uncertainty by cluster, permutation scores by type."""
    rows = [json.loads(p.read_text()) for p in sorted((OUT / "cellrank").glob("*.json"))]
    lines = ["# Pancreas: the analysis after the fit (velopyro defaults vs velovi 0.3.1)", "",
             "Written by `python -m benchmarks.pancreas_analysis report`; see the module docstring for the stages.",
             "", "## CellRank terminal states", "",
             f"0.8 VelocityKernel + 0.2 ConnectivityKernel, GPCCA ({N_SCHUR} Schur vectors, {N_MACROSTATES} "
             "macrostates named by majority cluster), `predict_terminal_states(method='stability')`. Velocity: "
             "velovi's tutorial transform for both tools (clipped at -Ms, divided per gene by 20 / max time).",
             "Stability: the macrostate's coarse-grained self-transition probability (terminal above 0.96); "
             "'-': no macrostate of that type among the 12.",
             "", "| tool | velocity | model | terminal states | of Alpha, Beta, Delta, Epsilon | other types called "
             "terminal | stability of the Alpha / Beta / Delta / Epsilon macrostates | 4 most stable (`method='top_n', "
             "n_states=4`) | macrostates |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["source"].split(":")[0], r["tool"], r["source"], r["model"])):
        stab = r.get("macrostate_stability")
        if stab is None:
            st, top = "not recorded", "not recorded"
        else:
            # CellRank's top_n: the n largest diagonal entries of coarse_T
            top4 = sorted(stab, key=stab.get)[-4:][::-1]
            n_fates = len({_cell_type(c) for c in top4} & set(TERMINAL_TYPES))
            top = f"{', '.join(top4)} ({n_fates}/4 fates)"
            best = {ct: max((v for k, v in stab.items() if _cell_type(k) == ct), default=None) for ct in TERMINAL_TYPES}
            st = " / ".join("-" if v is None else f"{v:.3f}" for v in best.values())
        n = r.get("n_macrostates", N_MACROSTATES)
        note = "" if n == N_MACROSTATES else (f" ({n} macrostates: GPCCA left a macrostate without cells at "
                                               f"{', '.join(map(str, r['macrostate_failures']))})" if n else
                                               " (GPCCA failed: " + "; ".join(r["macrostate_failures"].values()) + ")")
        lines.append(f"| {r['tool']} | {r['source']}{note} | {r['model']} | {', '.join(r['terminal_states'])} | "
                     f"{', '.join(r['found']) or '-'} ({len(r['found'])}/4) | "
                     f"{', '.join(r['not_terminal_types_called_terminal']) or '-'} | {st} | {top} | "
                     f"{', '.join(r['macrostates'])} |")
    fits = {p.stem[4:]: json.loads(p.read_text()) for p in sorted(OUT.glob("fit_*.json"))}
    if fits:
        lines += ["", "## Directional uncertainty by cluster", "",
                  "Median (IQR) over each cluster's cells of `directional_cosine_sim_variance` and median of "
                  "`directional_cosine_sim_mean` (50 draws; veloVI's intrinsic uncertainty: the variance and mean of "
                  "the cosine similarity of each draw's velocity to the mean velocity). Each tool's own "
                  "`get_directional_uncertainty`; velopyro's default weighs the states of each draw by their "
                  "posterior given the data, `(pi)`: by pi, as velovi.", ""]
        cols = _columns(fits, "uncertainty_by_cluster", "uncertainty_by_cluster_pi", "pi")
        lines += ["| cluster | " + " | ".join(f"{n}: variance | {n}: mean cosine" for n, _ in cols) + " |",
                  "|---" * (2 * len(cols) + 1) + "|"]
        clusters = sorted(next(iter(fits.values()))["uncertainty_by_cluster"])
        for ct in clusters:
            cells = []
            for _, by in cols:
                d = by[ct]["directional_cosine_sim_variance"]
                cells += [f"{d['median']:.2e} ({d['q25']:.1e}-{d['q75']:.1e})",
                          f"{by[ct]['directional_cosine_sim_mean']['median']:.3f}"]
            lines.append(f"| {ct} | " + " | ".join(cells) + " |")
        lines += ["", "## Permutation scores by cell type", "",
                  "Per cell type over genes: median t-statistic, and the share of genes above 2 (each tool's own "
                  "`get_permutation_scores(labels_key='clusters')`; higher: the fit describes the type's dynamics "
                  "better than with its u/s permuted). velovi 0.3.1 scores the first "
                  f"{VELOVI_PERMUTATION_CELLS} cells of each type, velopyro all of them, or a random "
                  f"{VELOVI_PERMUTATION_CELLS} with `max_cells={VELOVI_PERMUTATION_CELLS}`; the t-statistic grows "
                  "with the square root of the cells scored.", ""]
        pcols = _columns(fits, "permutation_by_cell_type", "permutation_by_cell_type_capped",
                         f"{VELOVI_PERMUTATION_CELLS} cells")
        lines += ["| cell type | cells | " + " | ".join(f"{n} median | {n} > 2" for n, _ in pcols) + " |",
                  "|---" * (2 * len(pcols) + 2) + "|"]
        types = sorted(next(iter(fits.values()))["permutation_by_cell_type"])
        n_cells = next(iter(fits.values()))["uncertainty_by_cluster"]
        for ct in types:
            cells = [str(n_cells.get(ct, {}).get("n_cells", "-"))]
            for _, by in pcols:
                d = by.get(ct)
                cells += [f"{d['median']:.2f}", f"{d['frac_above_2']:.2f}"] if d else ["-", "-"]
            lines.append(f"| {ct} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line: ``fit``, ``cellrank`` or ``report``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--tool", choices=("velopyro", "velovi"), required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--max-epochs", type=int, default=500)
    f.add_argument("--reuse", action="store_true", help="load the saved fit instead of fitting")
    c = sub.add_parser("cellrank")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--force", action="store_true", help="recompute jobs whose result exists")
    c.add_argument("--only", help="run only the jobs whose name contains this (e.g. velovi_default_s1)")
    sub.add_parser("report")
    a = p.parse_args(argv)
    set_threads(getattr(a, "threads", 1))
    quiet()
    if a.cmd == "fit":
        row = fit(a.tool, a.seed, a.max_epochs, a.reuse)
        print(json.dumps({k: row[k] for k in ("tool", "seed", "n_epochs")}))
    elif a.cmd == "cellrank":
        cellrank_all(a.only, a.force)
    else:
        print(report())


if __name__ == "__main__":
    main()
