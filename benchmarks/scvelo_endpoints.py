"""Why scVelo's end points moved with ``rate_init="auto"``: per-gene evidence on the scVelo-compat test's data.

``tests/test_scvelo_compat.py`` fits velopyro on a small simulation (600 cells x 20 genes, seed 0, the cells
with true time < 12: 358 cells) and checks scVelo's ``terminal_states`` / ``velocity_pseudotime`` /
``latent_time`` against the true time. This script fits the same data with a given start of gamma / beta
(``rate_init``) and number of epochs and records, per gene, the fitted gamma / beta over the true one and
the velocity's sign accuracy on the late cells (the top 15% of the true time, where the end points are),
and for the whole fit the share of velocity-graph weight pointing to later cells and scVelo's results.

Usage::

    python -m benchmarks.scvelo_endpoints run --rate-init auto --epochs 200
    python -m benchmarks.scvelo_endpoints report
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import RESULTS_DIR, quiet, set_threads

OUT = RESULTS_DIR / "scvelo_endpoints"


def fixture_data(seed: int = 0):
    """The test's data: ``simulate(600, 20, seed)`` cut to the cells with true time below 12."""
    import velopyro

    sim = velopyro.datasets.simulate(n_cells=600, n_genes=20, seed=seed)
    return sim[sim.obs["true_t"] < 12].copy()


def run(rate_init: str, epochs: int, early_stopping: bool, data_seed: int = 0, fit_seed: int = 0) -> dict:
    """Fit, write, build the velocity graph and score against the truth (see the module docstring)."""
    import scanpy as sc
    import scipy.sparse as sp
    import scvelo as scv
    from scipy.stats import spearmanr

    import velopyro

    adata = fixture_data(data_seed)
    model = velopyro.VeloPyro(adata, rate_init=rate_init)
    model.fit(max_epochs=epochs, batch_size=128, progress_bar=False, seed=fit_seed, early_stopping=early_stopping)
    model.write_to_adata(n_samples=3)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    velopyro.tl.velocity_graph(adata)
    t = adata.obs["true_t"].to_numpy()
    ratio = (adata.var["fit_gamma"] / adata.var["fit_beta"]).to_numpy()
    true_ratio = (adata.var["true_gamma"] / adata.var["true_beta"]).to_numpy()
    late = t > np.percentile(t, 85)
    v, tv = adata.layers["velocity"], adata.layers["true_velocity"]
    sign_late = (np.sign(v[late]) == np.sign(tv[late])).mean(0)
    sign_all = (np.sign(v) == np.sign(tv)).mean(0)
    g = sp.csr_matrix(adata.obsp["velocity_graph"])
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    forward = float((g.data * (t[g.indices] > t[rows])).sum() / g.data.sum())
    scv.settings.verbosity = 0
    scv.tl.terminal_states(adata)
    scv.tl.velocity_pseudotime(adata)
    scv.tl.latent_time(adata)
    hist = model.history
    row = {
        "rate_init": rate_init, "max_epochs": epochs, "early_stopping": early_stopping, "data_seed": data_seed,
        "fit_seed": fit_seed, "n_epochs": len(hist["epoch"]), "best_epoch": hist.get("best_epoch"),
        "ratio_over_truth": ratio / true_ratio, "true_switch_time": adata.var["true_t_"].to_numpy(),
        "sign_accuracy_late": sign_late, "sign_accuracy_all": sign_all,
        "graph_forward_weight": forward,
        "spearman_root_cells": spearmanr(adata.obs["root_cells"], t)[0],
        "spearman_end_points": spearmanr(adata.obs["end_points"], t)[0],
        "spearman_velocity_pseudotime": spearmanr(adata.obs["velocity_pseudotime"], t)[0],
        "spearman_scvelo_latent_time": spearmanr(adata.obs["latent_time"], t)[0],
        "validation_loss_best": float(np.min(hist["validation_loss"])),
    }
    row = {k: (np.asarray(x, float).round(4).tolist() if isinstance(x, np.ndarray) else x) for k, x in row.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"{rate_init}_e{epochs}{'' if early_stopping else '_noes'}_d{data_seed}_f{fit_seed}"
    (OUT / f"{name}.json").write_text(json.dumps(row, indent=1, default=float))
    return row


def report() -> str:
    """``results.md``: one line per run, then the per-gene table of each run."""
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    lines = ["# scVelo's end points on the scVelo-compat test's data", "",
             "`python -m benchmarks.scvelo_endpoints report`; see the module docstring.", "",
             "| rate_init | epochs run (best) | genes with gamma/beta > 1.2x truth | median late-cell sign accuracy | "
             "graph weight forward | end points | root cells | velocity pseudotime | scv latent time | best val loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = np.asarray(r["ratio_over_truth"])
        lines.append(f"| {r['rate_init']} (data {r['data_seed']}, fit {r['fit_seed']}) | {r['n_epochs']} "
                     f"({r['best_epoch']}) | {int((over > 1.2).sum())} / {over.size} | "
                     f"{np.median(r['sign_accuracy_late']):.2f} | {r['graph_forward_weight']:.3f} | "
                     f"{r['spearman_end_points']:.2f} | {r['spearman_root_cells']:.2f} | "
                     f"{r['spearman_velocity_pseudotime']:.2f} | {r['spearman_scvelo_latent_time']:.2f} | "
                     f"{r['validation_loss_best']:.2f} |")
    for r in rows:
        lines += ["", f"## {r['rate_init']}, {r['n_epochs']} epochs (data {r['data_seed']}, fit {r['fit_seed']})", "",
                  "| gene | true switch time | gamma/beta over truth | sign accuracy, late cells | all cells |",
                  "|---|---|---|---|---|"]
        for i, (ts, q, sl, sa) in enumerate(zip(r["true_switch_time"], r["ratio_over_truth"], r["sign_accuracy_late"],
                                                r["sign_accuracy_all"], strict=True)):
            lines.append(f"| {i} | {ts:.1f} | {q:.2f} | {sl:.2f} | {sa:.2f} |")
    text = "\n".join(lines) + "\n"
    (OUT / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line: ``run`` or ``report``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rate-init", default="auto")
    r.add_argument("--epochs", type=int, default=200)
    r.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="early stopping is on by default, as in the test's fit")
    r.add_argument("--data-seed", type=int, default=0)
    r.add_argument("--fit-seed", type=int, default=0)
    sub.add_parser("report")
    a = p.parse_args(argv)
    set_threads(1)
    quiet()
    if a.cmd == "run":
        row = run(a.rate_init, a.epochs, a.early_stopping, a.data_seed, a.fit_seed)
        print({k: row[k] for k in ("rate_init", "n_epochs", "spearman_end_points", "graph_forward_weight")})
    else:
        print(report())


if __name__ == "__main__":
    main()
