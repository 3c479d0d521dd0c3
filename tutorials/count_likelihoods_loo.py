# %% [markdown]
# # Poisson or negative binomial? Comparing count likelihoods by leave-one-out cross-validation
#
# velopyro's default observation model is the seed's Normal on kNN-smoothed, min-max scaled
# abundance (eq. 20-21). On **raw UMI counts** it offers a Poisson and a negative binomial (NB)
# likelihood: the expected count of cell n and gene g in state k is
# `size_factor_n * (scale_g * mean_k + background_g)`, where `mean_k` is the kinetic mean of eq. 1-12;
# the NB adds a per-gene inverse dispersion `theta_g` (Var = mu + mu^2 / theta).
#
# Both models see **the same observations** (the raw spliced/unspliced counts of the same cells and
# genes), so their expected log predictive densities (ELPD) can be compared by Pareto-smoothed
# importance-sampling LOO (`az.loo`, `az.compare`). LOO only compares models of the same data: it
# cannot compare the NB on counts with the Normal on Ms/Mu.
#
# Run as a script (`python tutorials/count_likelihoods_loo.py`) or open it as a notebook (jupytext
# percent format). `VELOPYRO_TUTORIAL_SMALL=1` runs a small version (a few hundred cells and genes, a
# few epochs) as in CI; `VELOPYRO_TUTORIAL_OUTPUT` sets the folder for figures (default
# `tutorials/output/`); `VELOPYRO_TUTORIAL_CELLS` and `VELOPYRO_TUTORIAL_EPOCHS` pick an intermediate
# size (a random subset of cells; epochs per fit).

# %%
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

import velopyro  # noqa: E402
from velopyro import ppc  # noqa: E402

SMALL = os.environ.get("VELOPYRO_TUTORIAL_SMALL", "0") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("VELOPYRO_TUTORIAL_OUTPUT", HERE / "output")) / "count_likelihoods_loo"
OUT.mkdir(parents=True, exist_ok=True)
N_CELLS = 200 if SMALL else int(os.environ.get("VELOPYRO_TUTORIAL_CELLS", 0)) or None  # None: all 3,696
N_GENES = 12 if SMALL else None  # None: every gene that preprocessing selects
MAX_EPOCHS = 10 if SMALL else int(os.environ.get("VELOPYRO_TUTORIAL_EPOCHS", 100))
N_DRAWS = 20 if SMALL else 100  # posterior draws for LOO
torch.manual_seed(0)
print(f"small={SMALL} output={OUT}")

# %% [markdown]
# ## Data: raw counts of the genes that preprocessing selects
#
# `pp.preprocess(..., keep_raw_counts=True)` runs the reference preprocessing (filtering,
# normalisation, moments, min-max scaling, gene selection) and keeps the original counts of the
# selected genes in `layers["raw_spliced"]` / `layers["raw_unspliced"]`; count likelihoods read those
# layers by default.

# %%
adata = velopyro.datasets.pancreas()
if N_CELLS is not None:
    keep = np.random.default_rng(0).choice(adata.n_obs, N_CELLS, replace=False)
    adata = adata[np.sort(keep)].copy()
velopyro.pp.preprocess(adata, keep_raw_counts=True, min_shared_counts=10 if SMALL else 30, n_pcs=20 if SMALL else 30)
if N_GENES is not None:
    adata = adata[:, : min(N_GENES, adata.n_vars)].copy()
# size factors come from each modality's total over the model's genes: drop cells without counts
tot_u = np.asarray(adata.layers["raw_unspliced"].sum(1)).ravel()
tot_s = np.asarray(adata.layers["raw_spliced"].sum(1)).ravel()
adata = adata[(tot_u > 0) & (tot_s > 0)].copy()
print(f"{adata.n_obs} cells x {adata.n_vars} genes of raw counts")

# %% [markdown]
# ## Fit both likelihoods on the same counts

# %%
models = {}
for name in ("poisson", "negative_binomial"):
    t0 = time.perf_counter()
    m = velopyro.VeloPyro(adata, likelihood=name)  # reads raw_spliced / raw_unspliced
    m.fit(max_epochs=MAX_EPOCHS, batch_size=min(256, adata.n_obs), progress_bar=False, seed=0)
    models[name] = m
    print(f"{name}: {len(m.history['epoch'])} epochs in {time.perf_counter() - t0:.0f} s, "
          f"validation -ELBO per cell {m.history['validation_loss'][-1]:.1f}")
theta = models["negative_binomial"].get_rates()["theta_s"]
print(f"NB inverse dispersion theta (spliced): median {np.median(theta):.2f}, "
      f"5%-95% {np.percentile(theta, 5):.2f}-{np.percentile(theta, 95):.2f}")

# %% [markdown]
# ## LOO over (cell, gene) pairs and over cells
#
# `to_arviz` builds ArviZ `InferenceData` with a pointwise log-likelihood: `log p(u_ng, s_ng | z_n)`
# with the state summed out and `pi_ng` integrated over its prior (eq. 14-15). Each cell has its own
# latent `z_n` (eq. 13): leaving a whole cell out returns `z_n` to its prior, which PSIS cannot
# bridge, so Pareto k is high for most cells whatever the likelihood. Leaving one (cell, gene) pair
# out barely moves `z_n`: that is the comparison to trust, with its Pareto k reported.

# %%
loo = {}
for name, m in models.items():
    idata = m.to_arviz(n_samples=N_DRAWS, per_gene_log_likelihood=True, var_names=["z"],
                       include_posterior_predictive=False, max_gb=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the Pareto k warning; we report k ourselves
        loo[name] = az.loo(idata, pointwise=True)
        idata_cell = m.to_arviz(n_samples=N_DRAWS, var_names=["z"], include_posterior_predictive=False)
        loo_cell = az.loo(idata_cell, pointwise=True)
    k = loo[name].pareto_k.values.ravel()
    kc = loo_cell.pareto_k.values.ravel()
    print(f"{name:>17}: per (cell, gene) elpd_loo {loo[name].elpd_loo:.1f} (se {loo[name].se:.1f}), "
          f"p_loo {loo[name].p_loo:.1f}, Pareto k > 0.7: {100 * np.mean(k > 0.7):.1f}% of {k.size} pairs")
    print(f"{'':>17}  per cell elpd_loo {loo_cell.elpd_loo:.1f} (se {loo_cell.se:.1f}), "
          f"Pareto k > 0.7: {100 * np.mean(kc > 0.7):.1f}% of {kc.size} cells")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    cmp = az.compare(loo)
print(cmp[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "weight"]].to_string())
best = cmp.index[0]
diff, dse = cmp["elpd_diff"].iloc[1], cmp["dse"].iloc[1]
print(f"best by LOO: {best}; the other is worse by {diff:.1f} (dse {dse:.1f}, {diff / max(dse, 1e-9):.1f} se)")

# %%
ax = az.plot_compare(cmp, insample_dev=False)
ax.figure.savefig(OUT / "compare.png", dpi=120, bbox_inches="tight")

# %% [markdown]
# ## Why: the randomised PIT and rootograms
#
# The conditional PIT (`velopyro.ppc.pit`) places each count within its own likelihood at a
# posterior draw of (z, pi, k); it is Uniform(0, 1) for a well-specified model. A Poisson likelihood
# on over-dispersed counts puts too many observations in the tails: a U shape.

# %%
for name, m in models.items():
    p = ppc.pit(m, n_samples=20 if SMALL else 100, modality="both", seed=0)
    tails = np.mean((p < 0.1) | (p > 0.9))
    print(f"{name:>17}: PIT KS unspliced {ppc.ks_uniform(p[0]):.3f}, spliced {ppc.ks_uniform(p[1]):.3f}; "
          f"share in the outer 20%: {tails:.3f} (uniform: 0.200)")
    velopyro.pl.pit_histogram(p[1], max_genes=2, gene_names=adata.var_names, save=OUT / f"pit_{name}.png")
    velopyro.pl.rootogram(m, n_samples=20, max_genes=2, max_count=30, save=OUT / f"rootogram_{name}.png")
print("figures:", sorted(f.name for f in OUT.glob("*.png")))
