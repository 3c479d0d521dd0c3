"""velopyro.pp on small synthetic data (dense and sparse) and once on the shipped pancreas data."""

import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from velopyro import pp
from velopyro._validation import VelopyroInputError
from velopyro.datasets import pancreas

N_CELLS, N_GENES = 200, 30


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def make_counts(n_cells=N_CELLS, n_genes=N_GENES, seed=0):
    """Poisson counts from induction/repression kinetics with a per-gene switch time."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n_cells)[:, None]
    alpha = rng.uniform(5, 20, n_genes)
    beta = rng.uniform(0.8, 1.5, n_genes)
    gamma = rng.uniform(0.2, 0.8, n_genes)
    t_s = rng.uniform(0.3, 0.7, n_genes)
    tt = 8 * t
    ts = 8 * t_s
    # induction from 0 with alpha, then repression with alpha = 0 (gamma != beta here)
    t1 = np.minimum(tt, ts)
    u1 = alpha / beta * (1 - np.exp(-beta * t1))
    s1 = alpha / gamma * (1 - np.exp(-gamma * t1)) + alpha / (gamma - beta) * (
        np.exp(-gamma * t1) - np.exp(-beta * t1)
    )
    t2 = np.maximum(tt - ts, 0)
    u = u1 * np.exp(-beta * t2)
    s = s1 * np.exp(-gamma * t2) - beta * u1 / (gamma - beta) * (np.exp(-gamma * t2) - np.exp(-beta * t2))
    size = rng.uniform(0.5, 2.0, (n_cells, 1))
    spliced = rng.poisson(size * np.clip(s, 0, None)).astype(np.float32)
    unspliced = rng.poisson(size * np.clip(u, 0, None)).astype(np.float32)
    return spliced, unspliced


def make_adata(fmt="csr", dtype=np.float32, zero_gene=True, seed=0):
    s, u = make_counts(seed=seed)
    if zero_gene:
        s[:, 3] = 0
        u[:, 3] = 0
    conv = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[fmt]
    adata = ad.AnnData(
        X=conv(s.astype(dtype)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(s.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(s.shape[1])]),
    )
    adata.layers["spliced"] = conv(s.astype(dtype))
    adata.layers["unspliced"] = conv(u.astype(dtype))
    return adata


def snapshot(adata):
    return {
        "shape": adata.shape,
        "var_names": list(adata.var_names),
        "layers": {k: _dense(v).copy() for k, v in adata.layers.items()},
        "X": _dense(adata.X).copy(),
        "obs": list(adata.obs.columns),
        "var": list(adata.var.columns),
        "uns": set(adata.uns.keys()),
        "obsm": set(adata.obsm.keys()),
    }


def assert_unchanged(adata, snap):
    assert adata.shape == snap["shape"]
    assert list(adata.var_names) == snap["var_names"]
    assert set(adata.layers.keys()) == set(snap["layers"])
    for k, v in snap["layers"].items():
        np.testing.assert_array_equal(_dense(adata.layers[k]), v)
    np.testing.assert_array_equal(_dense(adata.X), snap["X"])
    assert list(adata.obs.columns) == snap["obs"]
    assert list(adata.var.columns) == snap["var"]
    assert set(adata.uns.keys()) == snap["uns"]
    assert set(adata.obsm.keys()) == snap["obsm"]


# --------------------------------------------------------------------------------------------------
# filter_and_normalize
# --------------------------------------------------------------------------------------------------


def test_shared_counts_semantics():
    s = np.array([[5, 0, 3, 1], [4, 2, 0, 1], [0, 9, 3, 1]], dtype=np.float32)
    u = np.array([[1, 0, 0, 1], [2, 0, 3, 1], [7, 1, 0, 2]], dtype=np.float32)
    adata = ad.AnnData(X=s.copy(), layers={"spliced": s, "unspliced": u})
    adata.var_names = ["a", "b", "c", "d"]
    # shared: a = (5+1)+(4+2) = 12, b = 9+1 = 10, c = 0 (never both > 0), d = 2+2+3 = 7
    pp.filter_and_normalize(adata, min_shared_counts=8)
    assert list(adata.var_names) == ["a", "b"]


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_filter_and_normalize(fmt):
    adata = make_adata(fmt, dtype=np.int64 if fmt == "dense" else np.float32)
    raw_s, raw_u = _dense(adata.layers["spliced"]).copy(), _dense(adata.layers["unspliced"]).copy()
    with pytest.warns(UserWarning, match="dropping 1 gene.*'g3'"):
        pp.filter_and_normalize(adata, min_shared_counts=0)
    assert "g3" not in adata.var_names and adata.n_vars == N_GENES - 1
    keep = [j for j in range(N_GENES) if j != 3]

    # raw counts kept, layers normalised per cell to the median total (totals over all genes)
    np.testing.assert_array_equal(_dense(adata.layers["raw_spliced"]), raw_s[:, keep])
    np.testing.assert_array_equal(_dense(adata.layers["raw_unspliced"]), raw_u[:, keep])
    for layer, raw in (("spliced", raw_s), ("unspliced", raw_u)):
        tot = raw.sum(1)
        f = adata.obs[f"size_factor_{layer}"].to_numpy()
        nz = tot > 0  # cells without counts keep size factor 1
        assert (~nz).sum() < 10 and (f[~nz] == 1).all()
        np.testing.assert_allclose(f[nz], tot[nz] / np.median(tot), rtol=1e-6)
        np.testing.assert_allclose(_dense(adata.layers[layer]).sum(1)[nz], np.median(tot), rtol=1e-4)
        np.testing.assert_allclose(adata.obs[f"initial_size_{layer}"], tot)
        assert _dense(adata.layers[layer]).dtype == np.float32
        assert sp.issparse(adata.layers[layer]) == (fmt != "dense")
    np.testing.assert_allclose(
        _dense(adata.X), np.log1p(_dense(adata.layers["spliced"])), rtol=1e-5, atol=1e-6
    )
    rec = adata.uns["velopyro_pp"]["filter_and_normalize"]
    assert rec["min_shared_counts"] == 0 and rec["removed_constant_genes"] == ["g3"]
    assert rec["n_genes_out"] == N_GENES - 1
    assert "shared_counts" in adata.var


def test_filter_and_normalize_copy_leaves_input_unchanged():
    adata = make_adata("csr")
    snap = snapshot(adata)
    out = pp.filter_and_normalize(adata, min_shared_counts=20, copy=True)
    assert isinstance(out, ad.AnnData) and out is not adata
    assert "raw_spliced" in out.layers
    assert_unchanged(adata, snap)
    assert pp.filter_and_normalize(adata, min_shared_counts=20) is None
    assert "raw_spliced" in adata.layers


def test_filter_and_normalize_n_top_genes():
    adata = make_adata("csr", zero_gene=False)
    pp.filter_and_normalize(adata, min_shared_counts=0, n_top_genes=10)
    assert adata.n_vars == 10
    assert adata.var["highly_variable"].all()


@pytest.mark.parametrize(
    "corrupt, match",
    [
        ("negative", "'unspliced' contains 1 negative"),
        ("nan", "'unspliced' contains 1 NaN"),
        ("missing", "unspliced layer 'unspliced' not found"),
    ],
)
def test_filter_and_normalize_rejects_bad_input(corrupt, match):
    adata = make_adata("dense")
    u = adata.layers["unspliced"].copy()
    if corrupt == "negative":
        u[0, 0] = -1
        adata.layers["unspliced"] = u
    elif corrupt == "nan":
        u[0, 0] = np.nan
        adata.layers["unspliced"] = u
    else:
        del adata.layers["unspliced"]
    snap = snapshot(adata)
    with pytest.raises(VelopyroInputError, match=match):
        pp.filter_and_normalize(adata)
    assert_unchanged(adata, snap)


# --------------------------------------------------------------------------------------------------
# moments
# --------------------------------------------------------------------------------------------------


def test_moments_is_normalised_binary_knn_smoothing():
    adata = make_adata("csr")
    with pytest.warns(UserWarning):
        pp.filter_and_normalize(adata, min_shared_counts=0)
    with pytest.warns(UserWarning, match="n_pcs=30 capped"):
        pp.moments(adata, n_pcs=30, n_neighbors=10)
    for key in ("X_pca",):
        assert key in adata.obsm
    assert {"connectivities", "distances"} <= set(adata.obsp.keys()) and "neighbors" in adata.uns
    a = (adata.obsp["connectivities"] > 0).toarray().astype(float)
    np.fill_diagonal(a, 1.0)
    a /= a.sum(1, keepdims=True)
    for m, layer in (("Ms", "spliced"), ("Mu", "unspliced")):
        assert isinstance(adata.layers[m], np.ndarray) and adata.layers[m].dtype == np.float32
        np.testing.assert_allclose(adata.layers[m], a @ _dense(adata.layers[layer]), rtol=1e-4, atol=1e-5)
    assert adata.uns["velopyro_pp"]["moments"]["n_pcs"] == N_GENES - 2


def test_moments_missing_layer_and_raw_count_warning():
    adata = make_adata("csr")
    with pytest.raises(VelopyroInputError, match="'counts_s' not found.*available"):
        pp.moments(adata, spliced_layer="counts_s")
    with pytest.warns(UserWarning, match="looks like raw counts"):
        pp.moments(adata, n_pcs=5, n_neighbors=5, copy=True)


def test_missing_scanpy_message(monkeypatch):
    adata = make_adata("csr")
    monkeypatch.setitem(sys.modules, "scanpy", None)
    with pytest.raises(ImportError, match=r"pip install velopyro\[preprocessing\]"):
        with pytest.warns(UserWarning, match="raw counts"):
            pp.moments(adata, n_pcs=5, n_neighbors=5, copy=True)


# --------------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------------


def _with_moments(seed=0):
    rng = np.random.default_rng(seed)
    ms = rng.gamma(2.0, 1.0, (50, 6)).astype(np.float32)
    mu = (0.4 * ms + rng.normal(0, 0.1, ms.shape)).clip(0, None).astype(np.float32)
    adata = ad.AnnData(X=ms.copy(), layers={"Ms": ms, "Mu": mu})
    adata.var_names = [f"g{j}" for j in range(6)]
    return adata


def test_scale_drops_constant_gene_and_is_invertible():
    adata = _with_moments()
    adata.layers["Mu"][:, 2] = 0.7  # constant unspliced: cannot be min-max scaled
    snap = snapshot(adata)
    with pytest.warns(UserWarning, match="dropping 1 gene.*'g2'"):
        out = pp.scale(adata, copy=True)
    assert_unchanged(adata, snap)
    assert "g2" not in out.var_names and out.n_vars == 5
    keep = [0, 1, 3, 4, 5]
    for layer in ("Ms", "Mu"):
        x = out.layers[layer]
        assert not np.isnan(x).any() and x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_allclose(x.min(0), 0.0)
        np.testing.assert_allclose(x.max(0), 1.0)
        lo, hi = out.var[f"{layer}_min"].to_numpy(), out.var[f"{layer}_max"].to_numpy()
        np.testing.assert_allclose(x * (hi - lo) + lo, snap["layers"][layer][:, keep], rtol=1e-5, atol=1e-6)
    assert out.uns["velopyro_pp"]["scale"]["removed_constant_genes"] == ["g2"]

    # scaling again composes the stored min/max: they still map back to the original units
    lo0, hi0 = out.var["Ms_min"].to_numpy(), out.var["Ms_max"].to_numpy()
    out.layers["Ms"] = out.layers["Ms"] * 0.5 + 0.25  # e.g. an edit made in scaled units
    expected = out.layers["Ms"] * (hi0 - lo0) + lo0
    pp.scale(out, layers=["Ms"])
    lo, hi = out.var["Ms_min"].to_numpy(), out.var["Ms_max"].to_numpy()
    assert out.layers["Ms"].min() == 0.0 and out.layers["Ms"].max() == 1.0
    np.testing.assert_allclose(out.layers["Ms"] * (hi - lo) + lo, expected, rtol=1e-5, atol=1e-5)


def test_scale_missing_moments():
    adata = make_adata("csr")
    with pytest.raises(VelopyroInputError, match="'Ms' not found.*velopyro.pp.moments"):
        pp.scale(adata)


# --------------------------------------------------------------------------------------------------
# select_genes
# --------------------------------------------------------------------------------------------------


def test_select_genes_steady_state_fit():
    rng = np.random.default_rng(1)
    n = 400
    s = rng.uniform(0, 1, (n, 3))
    u = np.empty_like(s)
    u[:, 0] = 0.5 * s[:, 0]  # perfect steady state: gamma 0.5, R^2 1
    u[:, 1] = rng.uniform(0, 1, n)  # unrelated: R^2 < 0
    u[:, 2] = 0.3 * s[:, 2] + rng.normal(0, 0.02, n)  # noisy steady state
    s, u = s.astype(np.float32), u.astype(np.float32)
    adata = ad.AnnData(X=s.copy(), layers={"Ms": s, "Mu": u})
    adata.var_names = ["good", "noise", "ok"]
    out = pp.select_genes(adata, copy=True, subset=False)
    np.testing.assert_allclose(out.var["velocity_gamma"]["good"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(out.var["velocity_r2"]["good"], 1.0, atol=1e-5)
    assert out.var["velocity_r2"]["noise"] < 0
    assert list(out.var["velocity_genes"]) == [True, False, True]

    # the same numbers by hand: top 5% of s/max(s) + u/max(u), fit through the origin, R^2 on all cells
    s2, u2 = s[:, 2].astype(float), u[:, 2].astype(float)
    nrm = s2 / s2.max() + u2 / u2.max()
    w = nrm >= np.percentile(nrm, 95)
    g = (s2[w] * u2[w]).sum() / (s2[w] ** 2).sum()
    r2 = 1 - ((u2 - g * s2) ** 2).sum() / ((u2 - u2.mean()) ** 2).sum()
    np.testing.assert_allclose(out.var["velocity_gamma"]["ok"], g, rtol=1e-5)
    np.testing.assert_allclose(out.var["velocity_r2"]["ok"], r2, rtol=1e-5)

    pp.select_genes(adata)
    assert list(adata.var_names) == ["good", "ok"] and adata.var["velocity_genes"].all()
    rec = adata.uns["velopyro_pp"]["select_genes"]
    assert rec["n_velocity_genes"] == 2 and rec["min_r2"] == 0.01

    with pytest.raises(VelopyroInputError, match="no gene"):
        pp.select_genes(adata, min_r2=1.5)


# --------------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_preprocess_synthetic(fmt):
    adata = make_adata(fmt)
    snap = snapshot(adata)
    with pytest.warns(UserWarning):
        out = pp.preprocess(adata, min_shared_counts=0, n_top_genes=None, n_pcs=10, n_neighbors=15, copy=True)
    assert_unchanged(adata, snap)
    assert 0 < out.n_vars < N_GENES
    for layer in ("Ms", "Mu"):
        x = out.layers[layer]
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    log = out.uns["velopyro_pp"]
    assert set(log) == {"filter_and_normalize", "moments", "scale", "select_genes", "preprocess"}
    assert log["preprocess"]["used_existing_moments"] is False
    assert {"raw_spliced", "raw_unspliced"} <= set(out.layers)


def test_preprocess_reuses_existing_moments():
    adata = _with_moments()
    adata.layers["spliced"] = adata.layers["Ms"].copy()
    adata.layers["unspliced"] = adata.layers["Mu"].copy()
    out = pp.preprocess(adata, copy=True)
    assert out.uns["velopyro_pp"]["preprocess"]["used_existing_moments"] is True
    assert "filter_and_normalize" not in out.uns["velopyro_pp"]
    assert "moments" not in out.uns["velopyro_pp"]
    assert out.layers["Ms"].max() == 1.0
    with pytest.raises(VelopyroInputError, match="raw_spliced"):
        pp.preprocess(adata, keep_raw_counts=True, use_existing_moments=True, copy=True)


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------


def test_pancreas_dataset():
    adata = pancreas()
    assert adata.shape == (3696, 2000)
    assert sp.issparse(adata.layers["spliced"]) and adata.layers["unspliced"].dtype == np.float32
    assert (adata.X != adata.layers["spliced"]).nnz == 0 and adata.X is not adata.layers["spliced"]
    assert adata.obs["clusters"].value_counts()["Ductal"] == 916


def test_preprocess_pancreas():
    adata = pancreas()
    n_counts = (adata.layers["spliced"].nnz, adata.layers["unspliced"].nnz)
    t0 = time.perf_counter()
    out = pp.preprocess(adata, copy=True)  # reference settings: 30 shared counts, 30 PCs, 30 neighbours
    elapsed = time.perf_counter() - t0
    print(f"pancreas: {out.n_vars} velocity genes after preprocessing ({elapsed:.1f} s); reference: 371")
    assert elapsed < 60
    # caller's data untouched
    assert adata.shape == (3696, 2000) and set(adata.layers) == {"spliced", "unspliced"}
    assert (adata.layers["spliced"].nnz, adata.layers["unspliced"].nnz) == n_counts
    assert "velopyro_pp" not in adata.uns
    # result
    assert 300 <= out.n_vars <= 450
    for layer in ("Ms", "Mu"):
        x = out.layers[layer]
        assert x.shape == (3696, out.n_vars) and np.isfinite(x).all()
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert out.var["velocity_genes"].all() and (out.var["velocity_gamma"] > 0).all()
    log = out.uns["velopyro_pp"]
    assert log["filter_and_normalize"]["min_shared_counts"] == 30
    assert log["filter_and_normalize"]["n_genes_out"] == 1083
    assert log["preprocess"]["n_genes_out"] == out.n_vars
