# %% [markdown]
# # Posterior predictive checks of the pancreas fit
#
# A posterior predictive check asks whether data replicated from the fitted model look like the data.
# velopyro replicates by running its Pyro model **without observations**, with the cell's latent `z`
# and the state probabilities `pi` at a posterior draw (eq. 13-14, 22), the state `k` from its
# posterior given the data (eq. 15) and `u`, `s` from the likelihood (eq. 20-21). Everything is
# computed in batches of cells; replicates are binned or ranked on the fly and never stored whole.
#
# Three checks for the seed's Normal likelihood on Ms/Mu:
#
# 1. densities and ECDFs of observed vs replicated abundance, pooled over genes and per gene;
# 2. the PIT (probability integral transform) of every observation: uniform under a calibrated model;
#    a U shape means the data are more spread than the model's noise, a hump less;
# 3. the same per gene, to find the genes the model fits worst.
#
# `VELOPYRO_TUTORIAL_SMALL=1` runs a small version (as in CI); `VELOPYRO_TUTORIAL_OUTPUT` sets the
# figure folder (default `tutorials/output/`); `VELOPYRO_TUTORIAL_CELLS` and `VELOPYRO_TUTORIAL_EPOCHS`
# pick an intermediate size.

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

import velopyro  # noqa: E402
from velopyro import ppc  # noqa: E402

SMALL = os.environ.get("VELOPYRO_TUTORIAL_SMALL", "0") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("VELOPYRO_TUTORIAL_OUTPUT", HERE / "output")) / "ppc_pancreas"
OUT.mkdir(parents=True, exist_ok=True)
N_CELLS = 200 if SMALL else int(os.environ.get("VELOPYRO_TUTORIAL_CELLS", 0)) or None  # None: all 3,696
MAX_EPOCHS = 10 if SMALL else int(os.environ.get("VELOPYRO_TUTORIAL_EPOCHS", 500))
N_REP = 10 if SMALL else 100  # replicates per observation for the PIT

# %% [markdown]
# ## Preprocess and fit (the seed's model: Normal on min-max scaled Ms/Mu)

# %%
adata = velopyro.datasets.pancreas()
if N_CELLS is not None:
    keep = np.random.default_rng(0).choice(adata.n_obs, N_CELLS, replace=False)
    adata = adata[np.sort(keep)].copy()
velopyro.pp.preprocess(adata, min_shared_counts=10 if SMALL else 30, n_pcs=20 if SMALL else 30)
if SMALL:
    adata = adata[:, : min(10, adata.n_vars)].copy()
print(f"{adata.n_obs} cells x {adata.n_vars} genes")
t0 = time.perf_counter()
model = velopyro.VeloPyro(adata)
model.fit(max_epochs=MAX_EPOCHS, batch_size=min(256, adata.n_obs), progress_bar=False, seed=0)
print(f"fit: {len(model.history['epoch'])} epochs in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## 1. Observed vs replicated distributions
#
# Each thin blue line is one replicate of the whole data set; black is observed. The first panel
# pools all genes, the others show the most variable genes.

# %%
velopyro.pl.ppc_density(model, modality="s", n_samples=20, max_genes=5, save=OUT / "density_spliced.png")
velopyro.pl.ppc_density(model, modality="u", n_samples=20, max_genes=5, save=OUT / "density_unspliced.png")
velopyro.pl.ppc_density(model, modality="s", kind="ecdf", n_samples=20, max_genes=5, save=OUT / "ecdf_spliced.png")

# %% [markdown]
# Summaries of the replicates, per cell and gene (mean, sd, 5/50/95% quantiles), without storing draws:
# how often does the observation fall inside the 90% predictive interval?

# %%
rep = ppc.posterior_predictive(model, n_samples=N_REP, quantiles=(0.05, 0.95))
for m, x in (("u", model.data.u.numpy()), ("s", model.data.s.numpy())):
    inside = np.mean((x >= rep[m]["q0.05"]) & (x <= rep[m]["q0.95"]))
    print(f"{m}: {100 * inside:.1f}% of observations inside their 90% posterior predictive interval")

# %% [markdown]
# ## 2. PIT: calibration of the observation model
#
# `predictive="conditional"` (default) ranks each observation among replicates drawn from its own
# likelihood at one posterior draw of (z, pi, k): exactly uniform for a correct model and an exact
# posterior draw (a pivotal quantity), so it tests the Normal noise model itself.
# `predictive="marginal"` ranks it among replicates from many posterior draws, the classical
# in-sample posterior predictive, which is conservative (a hump) when the posterior of z is wide.

# %%
pit_c = ppc.pit(model, n_samples=N_REP, modality="both", seed=0)
pit_m = ppc.pit(model, n_samples=N_REP, modality="both", seed=0, predictive="marginal")
for label, p in (("conditional", pit_c), ("marginal", pit_m)):
    tails = np.mean((p < 0.1) | (p > 0.9))
    print(f"PIT {label:>11}: KS unspliced {ppc.ks_uniform(p[0]):.3f}, spliced {ppc.ks_uniform(p[1]):.3f}; "
          f"outer 20% holds {tails:.3f} (uniform 0.200)")
velopyro.pl.pit_histogram(pit_c[1], max_genes=5, gene_names=adata.var_names, save=OUT / "pit_conditional_spliced.png")
velopyro.pl.pit_histogram(pit_m[1], max_genes=5, gene_names=adata.var_names, save=OUT / "pit_marginal_spliced.png")

# %% [markdown]
# ## 3. The genes the model fits worst
#
# Per-gene KS distance of the conditional PIT from uniform, largest first.

# %%
ks_gene = ppc.ks_per_gene(pit_c[1])
order = np.argsort(-ks_gene)
print("KS per gene (spliced): median", f"{np.median(ks_gene):.3f}; worst:",
      ", ".join(f"{adata.var_names[j]} {ks_gene[j]:.2f}" for j in order[:5]))
velopyro.pl.ppc_density(model, genes=list(adata.var_names[order[:5]]), n_samples=20, pooled=False,
                        save=OUT / "density_worst_genes.png")
print("figures:", sorted(f.name for f in OUT.glob("*.png")))
