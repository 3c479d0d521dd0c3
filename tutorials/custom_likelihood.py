# %% [markdown]
# # Writing your own likelihood: a zero-inflated negative binomial
#
# In velopyro the observation model is one small object, a `velopyro.likelihoods.Likelihood`. The Pyro
# model (eq. 20-21 with the state enumerated, eq. 23-24), the simulator, the posterior predictive
# replicates, the PIT and the pointwise log-likelihood for ArviZ all call its `dist(...)`, so a new
# likelihood needs no change anywhere in velopyro. Here we add a zero-inflated negative binomial (ZINB):
# with probability `gate_g` a count is an extra zero (dropout), otherwise it is NB as in
# `velopyro.likelihoods.NegativeBinomial`. The class is 25 lines.
#
# `VELOPYRO_TUTORIAL_SMALL=1` runs a small version (as in CI); `VELOPYRO_TUTORIAL_OUTPUT` sets the
# figure folder (default `tutorials/output/`).

# %%
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

import velopyro  # noqa: E402
from velopyro import ppc  # noqa: E402
from velopyro.likelihoods import NegativeBinomial, register_likelihood  # noqa: E402

SMALL = os.environ.get("VELOPYRO_TUTORIAL_SMALL", "0") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("VELOPYRO_TUTORIAL_OUTPUT", HERE / "output")) / "custom_likelihood"
OUT.mkdir(parents=True, exist_ok=True)
N_CELLS, N_GENES, EPOCHS = (150, 8, 10) if SMALL else (1000, 40, 150)


# %% [markdown]
# ## The class
#
# * `name`: the key under which `register_likelihood` files it (so `likelihood="zinb"` works);
# * `setup(u, s, size_factor_u, size_factor_s)`: create per-gene parameters as `nn.Parameter`s; they are
#   point estimates fitted with the kinetic rates and saved with the model;
# * `dist(mean, state, modality, size_factor)`: a Pyro distribution for the kinetic mean `mean` of
#   state `state` (batch shapes broadcast; under enumeration `state` carries the enumeration dim);
# * `gene_params()` (optional): constrained parameters for reports, `get_rates()` and ArviZ.
#
# Subclassing `NegativeBinomial` re-uses its count handling (`is_count`, the expected count
# `size_factor (scale_g mean + background_g)`, the inverse dispersion `theta_g`, the encoder's
# `log1p` input and the kinetic scale of the switch targets).

# %%
@register_likelihood
class ZeroInflatedNB(NegativeBinomial):
    """NB with a per-gene, per-modality probability ``gate`` of an extra zero."""

    name = "zinb"

    def __init__(self, gate_init: float = 0.1) -> None:
        super().__init__()
        self.gate_init = gate_init

    def setup(self, u, s, size_factor_u, size_factor_s):
        super().setup(u, s, size_factor_u, size_factor_s)  # scale, background, theta
        logit = float(np.log(self.gate_init / (1.0 - self.gate_init)))
        self.gate_logit_u = nn.Parameter(torch.full((u.shape[1],), logit))
        self.gate_logit_s = nn.Parameter(torch.full((u.shape[1],), logit))

    def dist(self, mean, state, modality, size_factor=None):
        mu = self.rate(mean, modality, size_factor)  # size_factor * (scale * mean + background)
        theta = super().gene_params()[f"theta_{modality}"]
        return dist.ZeroInflatedNegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta),
                                                 gate_logits=getattr(self, f"gate_logit_{modality}"))

    def gene_params(self):
        out = super().gene_params()
        out.update(gate_u=torch.sigmoid(self.gate_logit_u), gate_s=torch.sigmoid(self.gate_logit_s))
        return out


# %% [markdown]
# ## Simulate from it
#
# `velopyro.datasets.simulate` draws the observations through the same object: the kinetics of the
# generative process (eq. 1-12) give the means and `ZeroInflatedNB.dist(...).sample()` the counts.
# It sets the parameters it knows (`scale`, `background`, `theta`) to its truth and leaves the
# others (our gates) at their initial values: 30% extra zeros here.

# %%
adata = velopyro.datasets.simulate(N_CELLS, N_GENES, seed=0, likelihood=ZeroInflatedNB(gate_init=0.3))
zeros = float((adata.layers["spliced"] == 0).mean())
print(f"simulated {adata.n_obs} cells x {adata.n_vars} genes; share of zero spliced counts: {zeros:.3f}")

# %% [markdown]
# ## Fit it, and the plain NB, to the same counts
#
# A likelihood passed by name is created fresh for every fit. (An instance can be passed too; it is
# then re-used as it is.)

# %%
models = {}
for name in ("negative_binomial", "zinb"):
    m = velopyro.VeloPyro(adata, likelihood=name, size_factor_key="true_size_factor")
    m.fit(max_epochs=EPOCHS, batch_size=min(128, N_CELLS), progress_bar=False, seed=0)
    models[name] = m
gate = models["zinb"].get_rates()["gate_s"]
print(f"fitted zero-inflation gate (spliced), median over genes: {np.median(gate):.3f} (truth 0.300)")

# %% [markdown]
# ## Posterior predictive checks and LOO
#
# The replicated zeros (posterior predictive, computed through `ZeroInflatedNB.dist`) against the
# observed share, the randomised PIT, and PSIS-LOO over (cell, gene) pairs.

# %%
loo = {}
for name, m in models.items():
    rep = ppc.posterior_predictive(m, n_samples=10 if SMALL else 30, summaries=False, return_draws=True)
    rep_zeros = float((rep["s"]["draws"] == 0).mean())
    p = ppc.pit(m, n_samples=30 if SMALL else 100, seed=0)
    idata = m.to_arviz(n_samples=30 if SMALL else 100, per_gene_log_likelihood=True, var_names=["z"],
                       include_posterior_predictive=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k warning: we print k ourselves
        loo[name] = az.loo(idata, pointwise=True)
    k = loo[name].pareto_k.values
    print(f"{name:>17}: replicated zeros {rep_zeros:.3f} (observed {zeros:.3f}); PIT KS {ppc.ks_uniform(p):.3f}; "
          f"elpd_loo {loo[name].elpd_loo:.1f} (se {loo[name].se:.1f}), Pareto k > 0.7: {100 * np.mean(k > 0.7):.1f}%")
    velopyro.pl.rootogram(m, n_samples=10, max_genes=2, max_count=25, save=OUT / f"rootogram_{name}.png")
    velopyro.pl.pit_histogram(p, max_genes=2, gene_names=m.adata.var_names, save=OUT / f"pit_{name}.png")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    cmp = az.compare(loo)
print(cmp[["rank", "elpd_loo", "elpd_diff", "dse"]].to_string())
print("figures:", sorted(f.name for f in OUT.glob("*.png")))
