"""Velocity direction over seeds: velopyro (default and training variants) beside velovi 0.3.1.

One run is one (data set, tool, variant, seed) fit; each writes a JSON row to
``benchmarks/results/direction/runs/`` and its arrays (velocity, latent time, state probabilities, rates) to
``benchmarks/cache/direction/`` for the per-gene diagnosis. ``report`` aggregates the rows into mean and
sd over seeds (``benchmarks/results/direction/results.md``).

Usage::

    python -m benchmarks.direction run --tool velovi --seeds 0 1 2
    python -m benchmarks.direction run --tool velopyro --variant default --seeds 0 1 2
    python -m benchmarks.direction run --tool velopyro --variant velovi_schedule --dataset scvelo --seeds 0 1 2
    python -m benchmarks.direction report

Pancreas: the velovi tutorial's preprocessing (:func:`benchmarks.data.pancreas`), one shared UMAP, the
same validation cells for both tools at a given seed (velovi's split, imposed on velopyro), CBDir per
transition and ICVCoh on velovi's tutorial velocity (clipped at -s, rescaled per gene by 20 / max time).
Simulators: velocity sign accuracy and latent-time Spearman against the simulated truth.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import CACHE_DIR, RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "direction"
RUNS = OUT / "runs"
ARRAYS = CACHE_DIR / "direction"

#: Training variants of velopyro: keyword arguments of ``VeloPyro.fit`` (``fit``) and of the constructor
#: (``init``). Each isolates one difference from velovi's training, or combines them (``velovi_schedule``).
VARIANTS: dict[str, dict] = {
    "default": {},
    # the default before rate_init="steady_state": every gene starts at gamma / beta = 0.31 / 0.97
    "constant_init": {"init": {"rate_init": "constant"}},
    # velovi: KL weight of z rising linearly over 400 epochs, and the switch penalty fading as 0.2 (1 - w)
    "velovi_schedule": {"fit": {"kl_warmup_epochs": 400, "penalty_fade": True}},
    "kl_warmup": {"fit": {"kl_warmup_epochs": 400}},
    "no_penalty_after_init": {"fit": {"kl_warmup_epochs": 1, "penalty_fade": True}},
    # velovi optimises the per-cell mean: AdamW's eps=0.01 and the clipping then act as in the reference
    "per_cell_loss": {"fit": {"loss_per_cell": True}},
    "steady_state_init": {"init": {"rate_init": "steady_state"}},
    # pi integrated out of the model (issue 15), with the default start
    "collapsed": {"adapter": {"pi_guide": "collapsed"}},
    # pi integrated out under a learned prior mean pi(z) (a StateHead inside the ELBO), the default start
    "conditional": {"adapter": {"pi_guide": "conditional"}},
    # velovi's time_dep_transcription_rate: alpha relaxes to alpha_1 during induction (issue 13)
    "time_dependent": {"init": {"kinetics": "time_dependent"}},
    "per_cell_loss_velovi_schedule": {"fit": {"loss_per_cell": True, "kl_warmup_epochs": 400, "penalty_fade": True}},
}

SIM = {"scvelo": {"n_cells": 1000, "n_genes": 100}, "velopyro": {"n_cells": 1000, "n_genes": 100}}


def _run_name(dataset: str, tool: str, variant: str, seed: int) -> str:
    return f"{dataset}_{tool}_{variant}_s{seed}"


def _adapter(tool: str, variant: str):
    if tool == "velovi":
        from benchmarks.run_velovi import VeloviAdapter

        return VeloviAdapter(n_samples=25)
    from benchmarks.run_velopyro import VelopyroAdapter

    spec = VARIANTS[variant]
    return VelopyroAdapter(n_samples=25, fit_kwargs=spec.get("fit"), init_kwargs=spec.get("init"),
                           **spec.get("adapter", {}))


def _dataset(name: str):
    from benchmarks import data

    if name == "pancreas":
        return data.pancreas(), None
    if name == "scvelo":
        adata = data.scvelo_simulation(**SIM["scvelo"])
    else:
        adata = data.velopyro_simulation(**SIM["velopyro"])
    return adata, data.ground_truth(adata)


def _velovi_validation(dataset: str, seed: int):
    """velovi's validation cells at this seed (from its run's arrays), so both tools hold out the same cells."""
    import numpy as np

    path = ARRAYS / f"{_run_name(dataset, 'velovi', 'default', seed)}.npz"
    if not path.exists():
        return None
    return np.load(path)["validation_indices"]


def backward_genes(obs, var, latent_time, state_probs):
    """velopyro's backward-gene flags (:func:`velopyro.tl.gene_time_consistency`) for one fit's arrays, computed
    as ``write_to_adata`` computes them: per-gene time, most probable state, cell time = scaled gene median."""
    import anndata as ad
    import numpy as np

    import velopyro

    c = np.median(latent_time, axis=1)
    x = ad.AnnData(obs=obs[[]].copy(), var=var[[]].copy(),
                   layers={"fit_t": np.asarray(latent_time, np.float32),
                           "fit_state": np.asarray(state_probs, np.float32).argmax(-1).astype(np.int8)})
    x.obs["latent_time"] = (c - c.min()) / max(c.max() - c.min(), 1e-12)
    velopyro.tl.gene_time_consistency(x)
    return x.var["fit_backward"].to_numpy(), x.var["fit_time_consistency"].to_numpy()


def score_drop_backward(adata, row: dict, v, lt, sp, vkey: str) -> None:
    """Direction with the genes flagged backward left out of the velocity graph (``row`` gains the scores)."""
    import numpy as np

    from benchmarks import metrics
    from benchmarks.common import layer_array

    bw, _ = backward_genes(adata.obs, adata.var, lt, sp)
    v_clip = np.maximum(v, -layer_array(adata, "Ms"))
    d = metrics.direction_scores(adata, v_clip, lt, vkey=vkey + "_fwd", genes=~bw)
    row["n_backward"] = int(bw.sum())
    row["cbdir_drop_backward"] = d["cbdir"]
    row["icvcoh_drop_backward"] = d["icvcoh"]["mean"]


def rescore() -> None:
    """Add the backward-gene-filtered direction scores to every pancreas run that lacks them (from its arrays)."""
    import numpy as np

    from benchmarks import data

    adata = data.pancreas()
    for path in sorted(RUNS.glob("pancreas_*.json")):
        row = json.loads(path.read_text())
        if "cbdir_drop_backward" in row:
            continue
        arr = np.load(ARRAYS / f"{path.stem}.npz", allow_pickle=True)
        score_drop_backward(adata, row, arr["velocity"], arr["latent_time"], arr["state_probs"], path.stem)
        path.write_text(json.dumps(row, indent=1))
        print(path.stem, row["cbdir"]["mean"], "->", row["cbdir_drop_backward"]["mean"], flush=True)


def run_one(dataset: str, tool: str, variant: str, seed: int) -> dict:
    """Fit one tool at one seed and score direction (pancreas) or truth (simulators)."""
    import numpy as np

    from benchmarks import metrics
    from benchmarks.common import layer_array

    adata, truth = _dataset(dataset)
    adapter = _adapter(tool, variant)
    val = None if tool == "velovi" else _velovi_validation(dataset, seed)
    t0 = time.time()
    rec = adapter.fit(adata.copy(), dataset, max_epochs=500, early_stopping=True, seed=seed,
                      validation_indices=val)
    fit_s = time.time() - t0
    v, lt, sp, rates = adapter.velocity(), adapter.latent_time(), adapter.state_probs(), adapter.rates()
    u, s = layer_array(adata, "Mu"), layer_array(adata, "Ms")
    vidx = adapter.validation_indices
    ll = metrics.heldout_loglik(adapter.state_mean_draws(vidx, n_samples=10), u[vidx], s[vidx])
    row = {
        "dataset": dataset, "tool": tool, "variant": variant, "seed": seed, "n_epochs": rec.n_epochs,
        "fit_seconds": fit_s, "heldout_loglik_per_cell": ll["mean_per_cell"],
        "same_validation_cells_as_velovi": val is not None,
    }
    if truth is None:
        v_clip = np.maximum(v, -s)
        d = metrics.direction_scores(adata, v_clip, lt, vkey=f"velocity_{tool}_{variant}_{seed}")
        row["cbdir"] = d["cbdir"]
        row["icvcoh"] = d["icvcoh"]["mean"]
        score_drop_backward(adata, row, v, lt, sp, f"velocity_{tool}_{variant}_{seed}")
    else:
        lts = metrics.latent_time_scores(lt, truth.time, truth.cell_time)
        row["latent_time_spearman"] = lts["gene_median"]
        row["latent_time_spearman_cell"] = lts["cell"]
        row["velocity_sign_accuracy"] = metrics.velocity_sign_accuracy(v, truth.velocity)["sign_accuracy"]
        row["gamma_over_beta_spearman"] = metrics.rate_ratio_scores(rates["beta"], rates["gamma"],
                                                                    truth.ratio)["spearman"]
    ARRAYS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ARRAYS / f"{_run_name(dataset, tool, variant, seed)}.npz", velocity=v.astype(np.float32),
                        latent_time=lt.astype(np.float32), state_probs=sp.astype(np.float16),
                        validation_indices=np.asarray(vidx), var_names=np.asarray(adata.var_names),
                        **{f"rate_{k}": np.asarray(x) for k, x in rates.items()})
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{_run_name(dataset, tool, variant, seed)}.json").write_text(json.dumps(row, indent=1))
    return row


def _stats(xs: list[float]) -> str:
    import numpy as np

    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    a = np.asarray(xs, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f} (n={len(a)})"


def report() -> str:
    """Aggregate every run JSON into ``results.md`` / ``results.json`` (mean ± sd over seeds)."""
    rows = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["tool"], r["variant"]), []).append(r)
    lines = ["# Velocity direction over seeds", "",
             "`python -m benchmarks.direction run ...` then `python -m benchmarks.direction report`; "
             "mean ± sd over seeds (sd with ddof=1).", ""]
    pan = {k: v for k, v in groups.items() if k[0] == "pancreas"}
    if pan:
        trans = list(next(iter(pan.values()))[0]["cbdir"]["per_transition"])
        lines += ["## Pancreas: CBDir per transition, mean CBDir, ICVCoh, held-out log-likelihood per cell", "",
                  "| measure | " + " | ".join(f"{t} / {v}" for _, t, v in pan) + " |",
                  "|---|" + "---|" * len(pan)]
        for tr in trans:
            lines.append(f"| {tr} | " + " | ".join(_stats([r["cbdir"]["per_transition"][tr] for r in g])
                                                   for g in pan.values()) + " |")
        for tr in trans:
            lines.append(f"| {tr}, backward genes left out | " + " | ".join(
                _stats([r.get("cbdir_drop_backward", {}).get("per_transition", {}).get(tr) for r in g])
                for g in pan.values()) + " |")
        for name, get in (("CBDir mean", lambda r: r["cbdir"]["mean"]), ("ICVCoh", lambda r: r["icvcoh"]),
                          ("CBDir mean, backward genes left out",
                           lambda r: r.get("cbdir_drop_backward", {}).get("mean")),
                          ("ICVCoh, backward genes left out", lambda r: r.get("icvcoh_drop_backward")),
                          ("genes flagged backward", lambda r: r.get("n_backward")),
                          ("held-out log-lik / cell", lambda r: r["heldout_loglik_per_cell"]),
                          ("epochs", lambda r: r["n_epochs"])):
            lines.append(f"| {name} | " + " | ".join(_stats([get(r) for r in g]) for g in pan.values()) + " |")
        lines.append("")
    for ds in ("scvelo", "velopyro"):
        sim = {k: v for k, v in groups.items() if k[0] == ds}
        if not sim:
            continue
        lines += [f"## {ds} simulator ({SIM[ds]['n_cells']} cells x {SIM[ds]['n_genes']} genes)", "",
                  "| measure | " + " | ".join(f"{t} / {v}" for _, t, v in sim) + " |", "|---|" + "---|" * len(sim)]
        for name, key in (("velocity sign accuracy", "velocity_sign_accuracy"),
                          ("latent time Spearman (gene median)", "latent_time_spearman"),
                          ("latent time Spearman (cell)", "latent_time_spearman_cell"),
                          ("gamma/beta Spearman", "gamma_over_beta_spearman"),
                          ("held-out log-lik / cell", "heldout_loglik_per_cell"), ("epochs", "n_epochs")):
            lines.append(f"| {name} | " + " | ".join(_stats([r.get(key) for r in g]) for g in sim.values()) + " |")
        lines.append("")
    text = "\n".join(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1))
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line: ``run`` fits (one per seed), ``report`` aggregates."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tool", choices=("velovi", "velopyro"), required=True)
    r.add_argument("--variant", default="default", choices=sorted(VARIANTS))
    r.add_argument("--dataset", default="pancreas", choices=("pancreas", "scvelo", "velopyro"))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    sub.add_parser("rescore")
    args = p.parse_args(argv)
    if args.cmd == "report":
        print(report())
        return
    if args.cmd == "rescore":
        set_threads(1)
        rescore()
        return
    set_threads(args.threads)
    from benchmarks.common import quiet

    quiet()
    for seed in args.seeds:
        row = run_one(args.dataset, args.tool, args.variant, seed)
        print(json.dumps({k: row[k] for k in row if k != "cbdir"}), row.get("cbdir", {}).get("mean"), flush=True)


if __name__ == "__main__":
    main()
