"""Input checks of velopyro._validation: every bad input raises VelopyroInputError naming the problem."""

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from velopyro._validation import (
    VelopyroInputError,
    check_constant_genes,
    check_expression,
    check_matrix,
    find_constant_genes,
    get_layer,
)

N_CELLS, N_GENES = 40, 6
FORMATS = ["dense", "csr", "csc"]


def _convert(x, fmt):
    if fmt == "csr":
        return sp.csr_matrix(x)
    if fmt == "csc":
        return sp.csc_matrix(x)
    return np.asarray(x)


def make_adata(fmt="dense", dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.poisson(3.0, size=(N_CELLS, N_GENES)).astype(dtype)
    u = rng.poisson(1.0, size=(N_CELLS, N_GENES)).astype(dtype)
    adata = ad.AnnData(
        X=_convert(s.copy(), fmt),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]),
    )
    adata.layers["spliced"] = _convert(s, fmt)
    adata.layers["unspliced"] = _convert(u, fmt)
    return adata


def fake_adata(spliced, unspliced):
    """A duck-typed AnnData that, unlike anndata, lets layers of any shape/dtype through."""
    n_obs, n_vars = np.shape(spliced)
    return SimpleNamespace(
        layers={"spliced": spliced, "unspliced": unspliced},
        X=None,
        n_obs=n_obs,
        n_vars=n_vars,
        shape=(n_obs, n_vars),
        obs_names=pd.Index([f"c{i}" for i in range(n_obs)]),
        var_names=pd.Index([f"g{j}" for j in range(n_vars)]),
    )


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.array(x)


def snapshot(adata):
    return {k: _dense(v).copy() for k, v in adata.layers.items()}, adata.shape


def assert_unchanged(adata, snap):
    layers, shape = snap
    assert adata.shape == shape
    assert set(adata.layers.keys()) == set(layers)
    for k, v in layers.items():
        np.testing.assert_array_equal(_dense(adata.layers[k]), v)


def test_error_is_value_error():
    assert issubclass(VelopyroInputError, ValueError)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_accepts_dense_and_sparse_any_numeric_dtype(fmt, dtype):
    adata = make_adata(fmt, dtype)
    snap = snapshot(adata)
    s, u = check_expression(adata, "spliced", "unspliced", min_cells=10)
    for out, layer in ((s, "spliced"), (u, "unspliced")):
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == adata.shape
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, _dense(adata.layers[layer]).astype(np.float32))
        if not sp.issparse(adata.layers[layer]):
            assert not np.shares_memory(out, adata.layers[layer])
    s[:] = -1.0  # writing to the result must not touch the AnnData
    assert_unchanged(adata, snap)


def test_result_is_a_copy_even_for_float32_dense():
    adata = make_adata("dense", np.float32)
    s, _ = check_expression(adata, "spliced", "unspliced")
    assert not np.shares_memory(s, adata.layers["spliced"])


def test_x_layer_is_supported():
    adata = make_adata("csr")
    s, _ = check_expression(adata, "X", "unspliced")
    np.testing.assert_array_equal(s, adata.X.toarray())


@pytest.mark.parametrize("missing", ["Ms", "spliced", "raw_unspliced"])
def test_missing_layer(missing):
    adata = make_adata()
    if missing == "spliced":
        del adata.layers["spliced"]
    snap = snapshot(adata)
    with pytest.raises(VelopyroInputError) as err:
        check_expression(adata, missing, "unspliced")
    msg = str(err.value)
    assert repr(missing) in msg
    assert "'unspliced'" in msg  # lists what is available
    if missing == "Ms":
        assert "velopyro.pp.moments" in msg
    if missing == "raw_unspliced":
        assert "velopyro.pp.filter_and_normalize" in msg
    assert_unchanged(adata, snap)


def test_get_layer_returns_the_stored_object_and_names_missing():
    adata = make_adata("csr")
    assert get_layer(adata, "spliced") is adata.layers["spliced"]
    assert get_layer(adata, "X") is adata.X
    with pytest.raises(VelopyroInputError, match="moments layer 'Mu' not found.*pp.moments"):
        get_layer(adata, "Mu", what="moments layer")
    with pytest.raises(VelopyroInputError, match="AnnData"):
        get_layer(np.zeros((3, 3)), "spliced")


def test_shape_mismatch_between_layers():
    bad = fake_adata(np.ones((5, 4)), np.ones((5, 3)))
    with pytest.raises(VelopyroInputError, match="'spliced'.*shape.*'unspliced'"):
        check_expression(bad, "spliced", "unspliced")


def test_shape_mismatch_against_adata():
    with pytest.raises(VelopyroInputError, match="layer 'spliced' has shape \\(3, 4\\) but adata has shape"):
        check_matrix(np.ones((3, 4)), "spliced", shape=(3, 5))
    bad = fake_adata(np.ones((5, 4)), np.ones((5, 4)))
    bad.n_vars = 7
    with pytest.raises(VelopyroInputError, match="adata has shape"):
        check_expression(bad, "spliced", "unspliced")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_nan_and_inf(fmt, bad_value, word):
    adata = make_adata("dense")
    u = adata.layers["unspliced"].copy()
    u[0, 0] = bad_value
    u[3, 2] = bad_value
    adata.layers["unspliced"] = _convert(u, fmt)
    snap = snapshot(adata)
    with pytest.raises(VelopyroInputError) as err:
        check_expression(adata, "spliced", "unspliced")
    msg = str(err.value)
    assert "'unspliced'" in msg and word in msg
    assert f"2 {word}" in msg
    assert_unchanged(adata, snap)  # assert_array_equal treats NaN == NaN


@pytest.mark.parametrize("fmt", FORMATS)
def test_negative(fmt):
    adata = make_adata("dense")
    s = adata.layers["spliced"].copy()
    s[2, 3] = -1.5
    adata.layers["spliced"] = _convert(s, fmt)
    snap = snapshot(adata)
    with pytest.raises(VelopyroInputError, match="'spliced' contains 1 negative"):
        check_expression(adata, "spliced", "unspliced")
    s_out, _ = check_expression(adata, "spliced", "unspliced", allow_negative=True)
    assert s_out[2, 3] == np.float32(-1.5)
    assert_unchanged(adata, snap)


@pytest.mark.parametrize(
    "values",
    [
        np.full((5, 4), "1", dtype=object),
        np.full((5, 4), "1", dtype=str),
        np.ones((5, 4), dtype=bool),
        np.ones((5, 4), dtype=complex),
    ],
    ids=["object", "str", "bool", "complex"],
)
def test_non_numeric_dtype(values):
    bad = fake_adata(np.ones((5, 4), dtype=np.float32), values)
    with pytest.raises(VelopyroInputError, match="'unspliced' has non-numeric dtype"):
        check_expression(bad, "spliced", "unspliced")


def test_object_dtype_in_real_anndata():
    adata = make_adata()
    adata.layers["spliced"] = adata.layers["spliced"].astype(object)
    with pytest.raises(VelopyroInputError, match="'spliced' has non-numeric dtype object"):
        check_expression(adata, "spliced", "unspliced")


def test_fewer_cells_than_batch():
    adata = make_adata()
    with pytest.raises(VelopyroInputError) as err:
        check_expression(adata, "spliced", "unspliced", min_cells=256)
    assert str(err.value) == (
        f"adata has {N_CELLS} cells, fewer than the minibatch size 256; lower batch_size"
    )
    check_expression(adata, "spliced", "unspliced", min_cells=N_CELLS)


def test_zero_genes():
    adata = make_adata()[:, []].copy()
    with pytest.raises(VelopyroInputError, match="0 genes"):
        check_expression(adata, "spliced", "unspliced")


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_and_constant_genes(fmt):
    adata = make_adata("dense")
    s, u = adata.layers["spliced"].copy(), adata.layers["unspliced"].copy()
    s[:, 1] = 0.0
    u[:, 1] = 0.0  # all-zero gene g1
    s[:, 4] = 2.0
    u[:, 4] = 1.0  # constant gene g4
    u[:, 5] = 0.0  # g5 only has a constant unspliced
    adata.layers["spliced"], adata.layers["unspliced"] = _convert(s, fmt), _convert(u, fmt)
    snap = snapshot(adata)

    x_s, x_u = adata.layers["spliced"], adata.layers["unspliced"]
    assert find_constant_genes(x_s, x_u, adata.var_names) == ["g1", "g4"]
    assert find_constant_genes(x_s, x_u, adata.var_names, either=True) == ["g1", "g4", "g5"]
    with pytest.raises(VelopyroInputError) as err:
        check_constant_genes(x_s, x_u, adata.var_names)
    msg = str(err.value)
    assert "2 gene(s)" in msg and "'g1'" in msg and "'g4'" in msg and "'g5'" not in msg
    assert "velopyro.pp.filter_and_normalize" in msg

    with pytest.raises(VelopyroInputError, match="'g1', 'g4'"):
        check_expression(adata, "spliced", "unspliced", reject_constant_genes=True)
    check_expression(adata, "spliced", "unspliced")  # not checked by default
    assert_unchanged(adata, snap)


def test_constant_gene_message_lists_at_most_ten():
    s = np.zeros((5, 15))
    names = [f"gene{i}" for i in range(15)]
    with pytest.raises(VelopyroInputError) as err:
        check_constant_genes(s, s, names)
    msg = str(err.value)
    assert "15 gene(s)" in msg and "'gene9'" in msg and "'gene10'" not in msg and "and 5 more" in msg


def test_messages_are_single_line():
    adata = make_adata()
    for call in (
        lambda: check_expression(adata, "Ms", "Mu"),
        lambda: check_expression(adata, "spliced", "unspliced", min_cells=1000),
    ):
        with pytest.raises(VelopyroInputError) as err:
            call()
        assert "\n" not in str(err.value)
