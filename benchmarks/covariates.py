"""Batch covariates: which design brings latent time, velocity and z back to the one-batch level.

    python -m benchmarks.covariates --likelihoods normal    # appends fits to results/covariates/rows_normal.jsonl
    python -m benchmarks.covariates --likelihoods poisson   # (the two can run side by side)
    python -m benchmarks.covariates --summarise             # results/covariates/results.{json,md} from the rows
    python -m benchmarks.covariates --quick                 # one seed, fewer epochs, nothing written

Data: ``velopyro.datasets.simulate`` with ``n_batches=2`` (batch 1's kinetic mean observed as
``a_g mean + c_g``, ``log a_g ~ Normal(0, 0.5)``, ``c_g ~ 0.2 Uniform(0, 1)`` for the Normal likelihood;
``a_g`` alone, a detection efficiency, for the Poisson, fitted with the simulation's size factors) and, as
the reference level, the same cells and genes with ``n_batches=1`` (the batch draws come from their own
generator, so the two data sets differ only by the batch effect). Each row is a fit of ``VeloPyro`` with:

- ``one_batch``: the data without a batch effect (the level to return to);
- ``no_key``: the two-batch data, no ``batch_key``;
- ``encoder_only`` (``batch_effect="none"``): the one-hot batch in the encoder only (scVI's conditional
  encoder without a batch-aware observation model);
- ``effect_onehot``: the one-hot batch in the encoder and the observation model's per-batch, gene-wise
  effect (:class:`velopyro.covariates.BatchEffect`; ``batch_effect="auto"``: scale and offset for the
  Normal likelihood, scale (detection efficiency) for the Poisson), ``batch_encoder="onehot"``;
- ``effect_corrected``: the same effect, and the encoder sees the observations mapped back to the
  reference batch by the fitted effect as well as the codes (``batch_encoder="corrected"``, the default);
- ``scale_corrected`` (Normal only): as ``effect_corrected`` with the scale alone (no offset);
- ``corrected_no_init`` (Normal only): as ``effect_corrected`` with the effect started at the identity
  instead of at moment matching (:meth:`velopyro.covariates.BatchEffect.initialise` skipped).

Scores, each the mean and sd over ``seeds`` (data seed = fit seed): latent time (Spearman of the cell-level
time with the true clock; median over genes of the per-gene Spearman), velocity (sign accuracy where the
true velocity is not near zero; median per-gene Pearson), and the batch-mixing score of the posterior mean
of z (:func:`velopyro.covariates.batch_mixing_score`, 15 neighbours; the one-batch fit is scored with the
two-batch data's labels, i.e. labels that carry no signal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, quiet, set_threads

OUT = RESULTS_DIR / "covariates"
SIM = dict(n_cells=400, n_genes=20)
FIT = dict(max_epochs=120, batch_size=128, progress_bar=False)
#: variant -> (data with batches, batch_key, batch_effect, batch_encoder)
VARIANTS = {
    "one_batch": (False, None, "auto", "corrected"),
    "no_key": (True, None, "auto", "corrected"),
    "encoder_only": (True, "batch", "none", "onehot"),
    "effect_onehot": (True, "batch", "auto", "onehot"),
    "effect_corrected": (True, "batch", "auto", "corrected"),
    "scale_corrected": (True, "batch", "scale", "corrected"),
    "corrected_no_init": (True, "batch", "auto", "corrected"),
}
NORMAL_ONLY = ("scale_corrected", "corrected_no_init")


@contextlib.contextmanager
def _no_init():
    """Within the block, the batch effect starts at the identity (the ablation of its initialisation)."""
    from velopyro.covariates import BatchEffect

    orig = BatchEffect.initialise
    BatchEffect.initialise = lambda self, u, s, codes: None
    try:
        yield
    finally:
        BatchEffect.initialise = orig


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")


def scores(model, adata, labels: np.ndarray) -> dict[str, float]:
    """Recovery and mixing scores of one fitted model on its simulation."""
    from benchmarks.metrics import velocity_sign_accuracy
    from velopyro.covariates import batch_mixing_score

    lt = model.get_latent_time(n_samples=10)
    cell = model.get_latent_time(level="cell")
    per_gene = [_spearman(lt[:, g], adata.layers["true_t"][:, g]) for g in range(adata.n_vars)]
    v = velocity_sign_accuracy(model.get_velocity(n_samples=10), adata.layers["true_velocity"])
    return {"time_cell": _spearman(cell, adata.obs["true_t"].to_numpy()),
            "time_gene_median": float(np.nanmedian(per_gene)),
            "velocity_sign": v["sign_accuracy"], "velocity_gene_pearson": v["gene_pearson_median"],
            "mixing": batch_mixing_score(model.get_latent_representation(), labels)}


def run(likelihoods: list[str], seeds: list[int], fit: dict, variants: list[str], write: bool) -> list[dict]:
    """Fit every variant on every seed (appending each row to ``rows_<likelihood>.jsonl`` if ``write``)."""
    from velopyro import VeloPyro
    from velopyro.datasets import simulate

    rows = []
    for lik in likelihoods:
        for seed in seeds:
            data = {flag: simulate(**SIM, seed=seed, likelihood=lik, n_batches=2 if flag else 1)
                    for flag in (False, True)}
            labels = data[True].obs["batch"].to_numpy()
            for name, (batched, key, effect, encoder) in VARIANTS.items():
                if name not in variants or (lik != "normal" and name in NORMAL_ONLY):
                    continue  # the count likelihoods' "auto" is the scale
                t0 = time.perf_counter()
                # counts: the simulation's size factors (20 genes leave a cell with no counts now and then)
                sf_key = "true_size_factor" if lik != "normal" else None
                m = VeloPyro(data[batched], likelihood=lik, batch_key=key, batch_effect=effect,
                             batch_encoder=encoder, size_factor_key=sf_key)
                if name == "corrected_no_init":  # the ablation: fit() rebuilds the model, so patch around it
                    with _no_init():
                        m.fit(seed=seed, **fit)
                else:
                    m.fit(seed=seed, **fit)
                row = {"likelihood": lik, "variant": name, "seed": seed, "epochs": len(m.history["epoch"]),
                       "seconds": round(time.perf_counter() - t0, 1), **scores(m, data[batched], labels)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if write:
                    OUT.mkdir(parents=True, exist_ok=True)
                    with open(OUT / f"rows_{lik}.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sd of every score per likelihood and variant, and the difference from ``one_batch``."""
    keys = ("time_cell", "time_gene_median", "velocity_sign", "velocity_gene_pearson", "mixing")
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["likelihood"], r["variant"]), []).append(r)
    for (lik, var), rs in groups.items():
        ref = groups.get((lik, "one_batch"), [])
        s = {"likelihood": lik, "variant": var, "n_seeds": len(rs)}
        for k in keys:
            vals = np.array([r[k] for r in rs], dtype=float)
            s[k] = float(vals.mean())
            s[f"{k}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            ref_by_seed = {r["seed"]: r[k] for r in ref}
            diffs = np.array([r[k] - ref_by_seed[r["seed"]] for r in rs if r["seed"] in ref_by_seed])
            if len(diffs):  # paired by seed: the same cells and genes with and without the batch effect
                s[f"{k}_gap"] = float(diffs.mean())
                s[f"{k}_gap_sd"] = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
        out.append(s)
    return out


def table(summary: list[dict]) -> str:
    """Markdown table of the summary."""
    cols = [("time_cell", "time (cell)"), ("time_gene_median", "time (gene median)"),
            ("velocity_sign", "velocity sign"), ("velocity_gene_pearson", "velocity Pearson"), ("mixing", "z mixing")]
    gaps = [("time_cell", "Δ time"), ("velocity_sign", "Δ velocity")]
    lines = ["| likelihood | variant | seeds | " + " | ".join(c[1] for c in cols + gaps) + " |",
             "|---|---|---|" + "---|" * (len(cols) + len(gaps))]
    for s in summary:
        cells = [f"{s[k]:.3f} ± {s[k + '_sd']:.3f}" for k, _ in cols]
        cells += [f"{s[k + '_gap']:+.3f} ± {s[k + '_gap_sd']:.3f}" if k + "_gap" in s else "" for k, _ in gaps]
        lines.append(f"| {s['likelihood']} | {s['variant']} | {s['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write ``results.json`` and ``results.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed, 60 epochs, no files written")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--likelihoods", nargs="+", default=["normal", "poisson"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--summarise", action="store_true", help="only summarise the rows written so far")
    args = p.parse_args()
    if not args.summarise:
        set_threads(1)
        quiet()
        fit = dict(FIT, max_epochs=60) if args.quick else dict(FIT)
        seeds = args.seeds[:1] if args.quick else args.seeds
        rows = run(args.likelihoods, seeds, fit, args.variants, write=not args.quick)
        if args.quick:
            print(table(summarise(rows)))
        return
    rows = [json.loads(line) for f in sorted(OUT.glob("rows_*.jsonl")) for line in f.read_text().splitlines()]
    res = {"settings": {"simulate": SIM, "fit": FIT, "threads": 1,
                        "seeds": sorted({r["seed"] for r in rows})}, "summary": summarise(rows), "rows": rows}
    md = (f"# Batch covariates ({SIM['n_cells']} cells x {SIM['n_genes']} genes, two batches; mean ± sd over seeds "
          f"{res['settings']['seeds']}, data seed = fit seed, {FIT['max_epochs']} epochs)\n\n"
          "Written by `python -m benchmarks.covariates --summarise` from the `rows_*.jsonl` files. `Δ`: the "
          "variant minus the one-batch fit of the same seed, mean ± sd over seeds (negative: below the one-batch "
          "level).\n\n"
          + table(res["summary"]) + "\n")
    print(md)
    (OUT / "results.json").write_text(json.dumps(res, indent=1))
    Path(OUT / "results.md").write_text(md)


if __name__ == "__main__":
    main()
