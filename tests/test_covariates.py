"""Batch covariates: reading them, the technical effect, the simulator's batches, the mixing score, and the
recovery test (with ``batch_key`` a two-batch fit returns to the one-batch level and z mixes the batches;
without it, it does not)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _fixtures import (
    SHORT_FITS,  # tests/ is on sys.path (pytest rootdir-relative import)
    fit_threads_context,  # tests/ is on sys.path (pytest rootdir-relative import)
)
from scipy.stats import spearmanr

import velopyro
from velopyro import VeloPyro
from velopyro._validation import VelopyroInputError
from velopyro.covariates import BatchEffect, batch_mixing_score, read_batches
from velopyro.datasets import simulate

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

# ---- reading the covariates ----------------------------------------------------------------------------


def _tiny(n_cells: int = 60, n_genes: int = 4, **kw):
    return simulate(n_cells, n_genes, seed=0, n_batches=2, **kw)


def test_read_batches_codes_and_categories() -> None:
    adata = _tiny()
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) < 20, "d2", "d1")  # not categorical: sorted
    codes, keys, cats = read_batches(adata, ["batch", "donor"])
    assert keys == ["batch", "donor"] and cats == [["batch0", "batch1"], ["d1", "d2"]]
    assert codes.shape == (60, 2) and codes.dtype == np.int64
    np.testing.assert_array_equal(codes[:, 0], adata.obs["batch"].cat.codes)
    np.testing.assert_array_equal(codes[:, 1], (np.arange(60) < 20).astype(int))
    # against a saved model's categories: the same codes, an unknown one refused in one line
    again, _, _ = read_batches(adata, "batch", [["batch0", "batch1"]])
    np.testing.assert_array_equal(again[:, 0], codes[:, 0])
    with pytest.raises(VelopyroInputError, match="not fitted on \\('batch1'") as err:
        read_batches(adata, "batch", [["batch0"]])
    assert "\n" not in str(err.value)


def test_bad_covariates_fail_in_one_line() -> None:
    adata = _tiny()
    before = adata.obs.copy()
    with pytest.raises(VelopyroInputError, match="'nope' is not an obs column") as err:
        VeloPyro(adata, batch_key="nope")
    assert "\n" not in str(err.value)
    with_nan = adata.copy()
    with_nan.obs["batch"] = with_nan.obs["batch"].astype(object)
    with_nan.obs.iloc[3, with_nan.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(VelopyroInputError, match="1 missing value"):
        VeloPyro(with_nan, batch_key="batch")
    adata.obs["cell_id"] = np.arange(adata.n_obs).astype(str)
    with pytest.raises(VelopyroInputError, match="looks continuous"):
        VeloPyro(adata, batch_key="cell_id")
    with pytest.raises(VelopyroInputError, match="detection efficiency"):
        VeloPyro(_tiny(likelihood="poisson"), likelihood="poisson", batch_key="batch", batch_effect="scale_offset")
    with pytest.raises(ValueError, match="batch_effect must be one of"):
        VeloPyro(adata, batch_key="batch", batch_effect="affine")
    pd.testing.assert_frame_equal(adata.obs.drop(columns="cell_id"), before)  # nothing written on failure
    one = _tiny()
    one.obs["batch"] = "only"
    with pytest.warns(UserWarning, match="single category"):
        VeloPyro(one, batch_key="batch", n_hidden=8)


def test_the_model_refuses_codes_that_are_not_codes() -> None:
    vp = VeloPyro(_tiny(), batch_key="batch", n_hidden=8)
    idx, u, s, sfu, sfs, codes = vp.data.batch(torch.arange(8), torch.device("cpu"))
    assert codes.shape == (8, 1)
    with pytest.raises(TypeError, match="batch covariate"):
        vp.model(idx, u, s, sfu, sfs)  # codes missing
    with pytest.raises(TypeError, match="integer codes"):
        vp.guide(idx, u, s, sfu, sfs, torch.tensor(1.0), torch.tensor(1.0))  # a weight in the codes' place
    plain = VeloPyro(simulate(40, 3), n_hidden=8)
    assert plain.data.batch(torch.arange(5), torch.device("cpu"))[-1].shape == (5, 0)


# ---- the effect, the simulator, the mixing score -------------------------------------------------------


def test_batch_effect_reference_identity_and_inverse() -> None:
    eff = BatchEffect((2, 3), n_genes=4, design="scale_offset")
    with torch.no_grad():
        for p in eff.parameters():
            p.normal_()
    codes = torch.tensor([[0, 0], [1, 0], [0, 2], [1, 1]])
    mean = torch.rand(4, 4, 4).movedim(-1, 0)  # a leading state axis, as in the model
    out = eff(mean, "u", codes)
    torch.testing.assert_close(out[:, 0], mean[:, 0])  # both keys at their reference: the identity
    tab = eff.effects()
    expect = mean[:, 3] * tab["scale_u"][1] * tab["scale_u"][2 + 1] + tab["offset_u"][1] + tab["offset_u"][3]
    torch.testing.assert_close(out[:, 3], expect)
    torch.testing.assert_close(eff.inverse(out[0], "u", codes), mean[0])
    assert tab["scale_s"][0].eq(1).all() and tab["offset_s"][2].eq(0).all()
    scale_only = BatchEffect((2,), 4, design="scale")
    assert {n for n, _ in scale_only.named_parameters()} == {"raw_log_scale_u", "raw_log_scale_s"}


def test_simulate_batches_truth() -> None:
    one, again = simulate(100, 5, seed=3), simulate(100, 5, seed=3, n_batches=1)
    np.testing.assert_array_equal(one.layers["Ms"], again.layers["Ms"])  # n_batches=1: earlier versions' data
    two = simulate(100, 5, seed=3, n_batches=2)
    np.testing.assert_array_equal(two.layers["true_s"], one.layers["true_s"])  # the same cells and kinetics
    truth = two.uns["true_batch_effects"]
    assert list(two.obs["batch"].cat.categories) == ["batch0", "batch1"] == list(truth["categories"])
    assert truth["scale_u"].shape == (2, 5) and (truth["scale_u"][0] == 1).all() and (truth["offset_s"][0] == 0).all()
    b1 = two.obs["batch"].to_numpy() == "batch1"
    expected = two.layers["true_s"][b1] * truth["scale_s"][1] + truth["offset_s"][1]
    resid = two.layers["Ms"][b1] - expected
    assert abs(resid.mean()) < 0.02 and resid.std() < 0.1  # Normal noise (sd 0.05 x c_k) around a_b s + c_b
    counts = simulate(100, 5, seed=3, n_batches=2, likelihood="poisson")
    assert (counts.uns["true_batch_effects"]["offset_u"] == 0).all()
    with pytest.raises(ValueError, match="n_batches"):
        simulate(10, 2, n_batches=0)


def test_batch_mixing_score_bounds() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    labels = rng.integers(0, 2, 400)
    mixed = batch_mixing_score(x, labels)
    assert 0.9 < mixed <= 1.0  # random labels: the plug-in entropy's small-sample bias only
    apart = x + 20.0 * labels[:, None]
    assert batch_mixing_score(apart, labels) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(batch_mixing_score(x, np.zeros(400)))
    codes = np.stack([labels, rng.integers(0, 2, 400)], 1)  # several keys: their combinations
    assert 0.85 < batch_mixing_score(x, codes) <= 1.0
    with pytest.raises(VelopyroInputError, match="one row of x per cell"):
        batch_mixing_score(x[:10], labels)


# ---- recovery: with batch_key back to the one-batch level, without it not --------------------------------

# the setting of benchmarks/covariates.py (its seed-2 rows): 400 cells x 20 genes, batch 1 observed through
# log a ~ Normal(0, 0.5) and c ~ 0.2 Uniform(0, 1) per gene and modality, 120 epochs
N_CELLS, N_GENES, EPOCHS, SEED = 400, 20, 120, 2


def _recovery(model: VeloPyro, adata) -> dict[str, float]:
    cell = model.get_latent_time(level="cell")
    v = model.get_velocity(n_samples=10)
    tv = adata.layers["true_velocity"]
    keep = np.abs(tv) > 0.05 * np.abs(tv).max(0, keepdims=True)  # as benchmarks.metrics.velocity_sign_accuracy
    labels = adata.obs["batch"].to_numpy() if "batch" in adata.obs else _LABELS
    return {"time": spearmanr(cell, adata.obs["true_t"]).statistic,
            "velocity": float((np.sign(v[keep]) == np.sign(tv[keep])).mean()),
            "mixing": batch_mixing_score(model.get_latent_representation(), labels)}


_LABELS = simulate(N_CELLS, N_GENES, seed=SEED, n_batches=2).obs["batch"].to_numpy()  # for the one-batch fit


def build_recovery(fit_seed: int = SEED) -> dict[str, dict[str, float]]:
    """The same cells and genes without a batch effect, with it and no batch_key, with it and batch_key.

    On one torch thread (:func:`_fixtures.fit_threads`): a fit's numbers depend on the thread count (README,
    reliability), and the margins were read off one-thread fits (on two threads this seed's batch_key fit
    gave latent time 0.881 against the one-batch 0.904, 0.003 past the margin). ``fit_seed``: the fits'
    (benchmarks/test_thresholds.py varies it; the data stay seed 2).
    """
    out = {}
    with fit_threads_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, n_batches, key in (("one_batch", 1, None), ("no_key", 2, None), ("batch_key", 2, "batch")):
            adata = simulate(N_CELLS, N_GENES, seed=SEED, n_batches=n_batches)
            m = VeloPyro(adata, batch_key=key)
            m.fit(max_epochs=EPOCHS, batch_size=128, progress_bar=False, seed=fit_seed)
            out[name] = _recovery(m, adata)
    return out


@pytest.fixture(scope="module")
def recovery() -> dict[str, dict[str, float]]:
    return build_recovery()


# batch_key fit's cell-level latent time minus the one-batch fit's: -0.035 to +0.023 over fit seeds 0-9 (one
# thread; benchmarks/results/test_thresholds/results.md, "covariates_recovery"), against a drop of 0.076 to 0.124
# without batch_key; the margin sits clearly below the worst of the corrected fits
TIME_MARGIN = 0.05


@pytest.mark.slow
def test_batch_key_returns_to_the_one_batch_level(recovery) -> None:
    one, fixed = recovery["one_batch"], recovery["batch_key"]
    assert fixed["time"] >= one["time"] - TIME_MARGIN, recovery
    assert fixed["velocity"] >= one["velocity"] - 0.02, recovery
    assert fixed["mixing"] > 0.7, recovery  # z mixes the batches (labels without signal score ~0.95)


@pytest.mark.slow
def test_without_batch_key_the_batches_stay_apart(recovery) -> None:
    one, naive = recovery["one_batch"], recovery["no_key"]
    # recovery does not return: here velocity falls ~0.1 (a rank over the clock, time survives the distortion)
    assert naive["time"] < one["time"] - 0.02 or naive["velocity"] < one["velocity"] - 0.02, recovery
    assert naive["mixing"] < 0.3, recovery  # z encodes the batch


def test_saved_with_its_categories(tmp_path) -> None:
    adata = _tiny(120, 5)
    m = VeloPyro(adata, batch_key="batch", n_hidden=16)
    m.fit(max_epochs=2, batch_size=64, progress_bar=False)
    m.write_to_adata(n_samples=1)
    cfg = adata.uns["velopyro"]["config"]
    assert list(cfg["batch_key"]) == ["batch"] and list(cfg["batch_categories"]["batch"]) == ["batch0", "batch1"]
    assert cfg["batch_effect"] == "scale_offset" and cfg["batch_encoder"] == "corrected"
    eff = m.get_batch_effects()["batch"]
    assert eff["scale_u"].shape == (2, 5) and (eff["scale_u"][0] == 1).all()
    m.save(tmp_path / "m")
    # reordered categories in obs: the codes follow the saved order, so the outputs are the same
    flipped = adata.copy()
    flipped.obs["batch"] = flipped.obs["batch"].cat.reorder_categories(["batch1", "batch0"])
    back = VeloPyro.load(tmp_path / "m", flipped)
    np.testing.assert_allclose(back.get_latent_representation(), m.get_latent_representation(), rtol=1e-5)
    unknown = adata.copy()
    unknown.obs["batch"] = unknown.obs["batch"].cat.rename_categories({"batch1": "batch7"})
    with pytest.raises(VelopyroInputError, match="'batch7'") as err:
        VeloPyro.load(tmp_path / "m", unknown)
    assert "\n" not in str(err.value)


def test_cli_batch_key(tmp_path, capsys) -> None:
    from velopyro.cli import main

    src = tmp_path / "in.h5ad"
    _tiny(120, 5).write_h5ad(src)
    code = main(["fit", str(src), "-o", str(tmp_path / "out.h5ad"), "--batch-key", "nope", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "'nope' is not an obs column" in err
    code = main(["fit", str(src), "-o", str(tmp_path / "out.h5ad"), "--batch-key", "batch", "--max-epochs", "1",
                 "--n-samples", "1", "--batch-size", "64", "--quiet"])
    assert code == 0, capsys.readouterr().err
    import anndata as ad

    assert list(ad.read_h5ad(tmp_path / "out.h5ad").uns["velopyro"]["config"]["batch_key"]) == ["batch"]
    assert velopyro.covariates.BATCH_EFFECTS[0] == "auto"


def test_the_likelihood_and_the_replicates_see_the_batch_effect() -> None:
    from velopyro import posterior, ppc

    vp = VeloPyro(_tiny(40, 3), batch_key="batch", n_hidden=8)
    with torch.no_grad():
        for p in vp.model.batch_effect.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    idx, u, s, sfu, sfs, codes = vp.data.batch(torch.arange(40), torch.device("cpu"))
    u_bar, s_bar = torch.rand(40, 3, 4), torch.rand(40, 3, 4)
    ll_u, _ = vp.model.state_log_likelihood(u_bar, s_bar, u, s, sfu, sfs, codes)
    tab = vp.model.batch_effect.effects()
    mean = u_bar * tab["scale_u"][codes[:, 0]].unsqueeze(-1) + tab["offset_u"][codes[:, 0]].unsqueeze(-1)
    sd = vp.likelihood.sigma("u")[None, :, None] * vp.likelihood.state_scale
    torch.testing.assert_close(ll_u, torch.distributions.Normal(mean, sd).log_prob(u.unsqueeze(-1)))
    # posterior predictive replicates are drawn around the batch's observed mean (here far from the kinetic one)
    vp.is_trained = True
    smp = next(posterior.iterate_samples(vp.model, vp.guide, vp.data))[2]
    k = ppc.posterior_states(smp, "independent")
    with torch.no_grad():
        vp.model.batch_effect.raw_offset_u[1] += 50.0
    u_rep, _ = ppc.replicate(vp, smp, states=k)
    b1 = codes[:, 0] == 1
    assert u_rep[b1].mean() > 40 and u_rep[~b1].abs().mean() < 10
