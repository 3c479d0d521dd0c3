# %% [markdown]
# # Writing your own kinetics: basal transcription
#
# In velopyro the transcription kinetics is one object, a `velopyro.kinetics.Kinetics`: it holds the
# per-gene rates as constrained parameters and the closed forms built on them (the induction and
# repression solutions, the steady states, the switch point, the per-state velocities and the trajectory).
# The Pyro model, the posterior (velocity), the simulator and the phase portraits all ask it, so a new
# kinetics is one class and no change anywhere in velopyro.
#
# veloVI's kinetics (`"constant"`, seed eq. 1-12) switches transcription off completely: after repression
# every gene decays to u = s = 0. Many genes keep a basal transcription rate `alpha_0`; scVelo's dynamical
# model has offsets for it. Here we add that as a kinetics, simulate from it, and fit it and the default.
#
# `VELOPYRO_TUTORIAL_SMALL=1` runs a small version (as in CI); `VELOPYRO_TUTORIAL_OUTPUT` sets the
# figure folder (default `tutorials/output/`).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import velopyro  # noqa: E402
from velopyro import kinetics  # noqa: E402

SMALL = os.environ.get("VELOPYRO_TUTORIAL_SMALL", "0") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("VELOPYRO_TUTORIAL_OUTPUT", HERE / "output")) / "custom_kinetics"
OUT.mkdir(parents=True, exist_ok=True)
N_CELLS, N_GENES, EPOCHS = (200, 10, 10) if SMALL else (1000, 40, 300)


# %% [markdown]
# ## The class
#
# The basal state is the steady state of transcription `alpha_0`, `(alpha_0 / beta, alpha_0 / gamma)`.
# The ODE is linear, so each phase is the default's solution shifted by it: induction starts there with
# rate `alpha` (the default's induction at rate `alpha - alpha_0`, plus the offset), repression relaxes
# back to it (the default's repression of the distance to it, plus the offset), and the repression steady
# state is the basal state. In repression `du/dt = alpha_0 - beta u`.
#
# * `name`, `rate_names`: the registered name (`kinetics="basal"`) and the per-gene rates, each fitted in
#   (0, 50) as `raw_<rate>` (the switch time `t_s` is added by the base class);
# * `initial_rates`: their starting values (here the default's, and `alpha_0` at 5% of `alpha`);
# * the closed forms, each taking `r`, the dict of rates;
# * `sample_rates` (optional): the simulator's truth.
#
# Subclassing `ConstantKinetics` re-uses its transcription rate, induction steady state and initial values.

# %%
@kinetics.register_kinetics
class BasalKinetics(kinetics.ConstantKinetics):
    """Constant induction at ``alpha`` and basal transcription ``alpha_0`` outside it."""

    name = "basal"
    rate_names = ("alpha", "alpha_0", "beta", "gamma")

    def initial_rates(self, u_star, beta_init, gamma_init):
        out = super().initial_rates(u_star, beta_init, gamma_init)
        return out | {"alpha_0": 0.05 * out["alpha"]}

    def basal(self, r):
        return r["alpha_0"] / r["beta"], r["alpha_0"] / r["gamma"]

    def induction(self, t, r):
        (ub, sb), (u, s) = self.basal(r), kinetics.induction(t, r["alpha"] - r["alpha_0"], r["beta"], r["gamma"])
        return ub + u, sb + s

    def repression(self, tau, u0, s0, r):
        (ub, sb) = self.basal(r)
        u, s = kinetics.repression(tau, u0 - ub, s0 - sb, r["beta"], r["gamma"])
        return ub + u, sb + s

    def repression_steady_state(self, r):
        return self.basal(r)

    def state_velocities(self, u_bar, s_bar, t_ind, r):
        du, ds = super().state_velocities(u_bar, s_bar, t_ind, r)  # transcription alpha in induction, else 0
        return du + r["alpha_0"].unsqueeze(-1) * u_bar.new_tensor([0.0, 0.0, 1.0, 0.0]), ds

    def sample_rates(self, rng, n_genes, t_max):
        out = super().sample_rates(rng, n_genes, t_max)
        return out | {"alpha_0": out["alpha"] * rng.uniform(0.05, 0.4, n_genes)}


# %% [markdown]
# ## Simulate from it
#
# `velopyro.datasets.simulate(kinetics=...)` draws the true rates with `sample_rates` and the means and
# velocities with the class's closed forms.

# %%
adata = velopyro.datasets.simulate(N_CELLS, N_GENES, seed=0, kinetics="basal")
basal_true = adata.var["true_alpha_0"] / adata.var["true_beta"]
print(f"simulated {adata.n_obs} cells x {adata.n_vars} genes; basal unspliced level alpha_0 / beta, median "
      f"{np.median(basal_true):.3f}")

# %% [markdown]
# ## Fit it and the default on the same cells
#
# Both hold out the same validation cells (the same seed), so their held-out log-likelihoods compare.

# %%
models = {}
for name in ("constant", "basal"):
    m = velopyro.VeloPyro(adata, kinetics=name)
    m.fit(max_epochs=EPOCHS, batch_size=min(128, N_CELLS), progress_bar=False, seed=0)
    models[name] = m
    ll = m.get_log_likelihood(n_samples=5, indices=m.validation_indices).mean()
    t = m.get_latent_time(level="cell")
    print(f"{name:>8}: held-out log-likelihood per cell {ll:.2f}; latent time vs truth, Spearman "
          f"{spearmanr(t, adata.obs['true_t'])[0]:.3f}")
r = models["basal"].get_rates()
fitted_basal = r["alpha_0"] / r["beta"]
print(f"basal level alpha_0 / beta, fitted vs truth: Spearman {spearmanr(fitted_basal, basal_true)[0]:.3f}")

# %% [markdown]
# ## Figures
#
# The phase portraits draw each fit's own trajectory: the basal kinetics' repression ends at its basal
# state, the default's at the origin.

# %%
for name, m in models.items():
    fitted = m.write_to_adata(copy=True)
    fig = velopyro.pl.phase_portraits(fitted, n_genes=min(6, N_GENES))
    fig.suptitle(f"kinetics={name!r}")
    fig.savefig(OUT / f"phase_portraits_{name}.png", dpi=80)
    plt.close(fig)
fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(basal_true, fitted_basal, s=12)
lim = [0, max(basal_true.max(), fitted_basal.max()) * 1.05]
ax.plot(lim, lim, "k--", lw=0.8)
ax.set(xlabel="true alpha_0 / beta", ylabel="fitted alpha_0 / beta", title="basal unspliced level")
fig.tight_layout()
fig.savefig(OUT / "basal_level.png", dpi=80)
plt.close(fig)
print(f"figures in {OUT}")
