"""Out-of-core data: training from an .h5ad file or zarr store, streamed statistics, chunked outputs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)

import velopyro
from velopyro import _disk, posterior
from velopyro._validation import VelopyroInputError
from velopyro.data import BLOCK_CELLS, MAX_GAP, WINDOW_CELLS, BackedVeloData

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sim() -> ad.AnnData:
    return velopyro.datasets.simulate(300, 12, seed=3)


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("disk")
    out = {"h5ad": str(d / "sim.h5ad"), "zarr": str(d / "sim.zarr")}
    sim.write_h5ad(out["h5ad"])
    sim.write_zarr(out["zarr"])
    return out


def _same_state(a: velopyro.VeloPyro, b: velopyro.VeloPyro) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "backed"])
def test_disk_model_starts_as_in_memory(sim, files, kind):
    """The streamed pass gives the in-memory path's per-gene starting values exactly (all cells fit the subsample),
    and minibatches read from disk equal the in-memory ones, in the requested order."""
    src = ad.read_h5ad(files["h5ad"], backed="r") if kind == "backed" else files[kind]
    disk, mem = velopyro.VeloPyro(src), velopyro.VeloPyro(sim)
    assert isinstance(disk.data, BackedVeloData) and disk.store is not None
    assert _same_state(disk, mem)
    idx = torch.tensor([299, 5, 3, 200, 201, 0, 150])
    for x, y in zip(disk.data.batch(idx, CPU), mem.data.batch(idx, CPU), strict=True):
        assert torch.equal(x, y)


def test_counts_csr_on_disk(tmp_path):
    """Raw counts stored as CSR: size factors over all cells and the count likelihood's starting values
    equal the in-memory ones."""
    a = velopyro.datasets.simulate(250, 10, seed=1, likelihood="negative_binomial")
    for k in ("spliced", "unspliced"):
        a.layers[k] = sp.csr_matrix(a.layers[k])
    path = str(tmp_path / "counts.h5ad")
    a.write_h5ad(path)
    disk = velopyro.VeloPyro(path, likelihood="negative_binomial")
    mem = velopyro.VeloPyro(a, likelihood="negative_binomial")
    assert _same_state(disk, mem)
    assert torch.equal(disk.data.size_factor_u, mem.data.size_factor_u)
    idx = torch.tensor([7, 249, 0, 100])
    assert torch.equal(disk.data.batch(idx, CPU)[1], mem.data.batch(idx, CPU)[1])


def test_statistics_subsample_when_large(sim, files, monkeypatch):
    """Above STAT_ENTRIES the per-gene statistics come from evenly spaced cells (fixed memory) and stay close."""
    monkeypatch.setattr(_disk, "STAT_ENTRIES", 12 * 100)
    rows = _disk.stat_rows(300, 12, 12 * 100)
    assert len(rows) == 100 and rows[0] == 0 and rows[-1] == 299 and np.all(np.diff(rows) > 0)
    disk, mem = velopyro.VeloPyro(files["h5ad"]), velopyro.VeloPyro(sim)
    assert disk._sub.u.shape == (100, 12)
    np.testing.assert_allclose(disk.likelihood.sigma("s").detach(), mem.likelihood.sigma("s").detach(), rtol=0.2)
    assert not _same_state(disk, mem)


def test_block_shuffle(files):
    """Block shuffle: a permutation of the training cells, fixed by the generator, in contiguous runs."""
    data = velopyro.VeloPyro(files["h5ad"]).data
    train = torch.as_tensor(np.setdiff1d(np.arange(300), [10, 11, 100]))
    o1 = data.shuffle(train, torch.Generator().manual_seed(0))
    o2 = data.shuffle(train, torch.Generator().manual_seed(0))
    o3 = data.shuffle(train, torch.Generator().manual_seed(1))
    assert torch.equal(o1, o2) and not torch.equal(o1, o3)
    assert torch.equal(torch.sort(o1).values, train)
    # at scale: each window of WINDOW_CELLS consecutive cells of the order is made of whole blocks of
    # BLOCK_CELLS contiguous training cells, so a minibatch of 256 reads at most WINDOW / BLOCK row ranges
    big = torch.arange(20_000)
    order = data.shuffle(big, torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(np.sort(order), big.numpy())
    for w0 in range(0, 20_000 - WINDOW_CELLS, WINDOW_CELLS):
        blocks = np.unique(order[w0:w0 + WINDOW_CELLS] // BLOCK_CELLS)
        assert len(blocks) == WINDOW_CELLS // BLOCK_CELLS
    reads = np.count_nonzero(np.diff(np.sort(order[:256])) > MAX_GAP) + 1  # as BackedVeloData.read merges
    assert reads <= WINDOW_CELLS // BLOCK_CELLS
    assert not np.array_equal(order[:256], np.sort(order[:256]))  # cells mixed within the window


def test_fit_from_disk_is_deterministic(files):
    m1 = velopyro.VeloPyro(files["h5ad"]).fit(max_epochs=2, batch_size=64, progress_bar=False)
    m2 = velopyro.VeloPyro(files["zarr"]).fit(max_epochs=2, batch_size=64, progress_bar=False)
    assert m1.history["train_loss"] == m2.history["train_loss"]
    assert np.isfinite(m1.history["validation_loss"]).all()
    assert _same_state(m1, m2)


def test_write_to_adata_one_pass_equals_getters(sim):
    """The one-pass write equals the separate getters for the same seed, and the store equals the in-memory write."""
    a = sim.copy()
    m = velopyro.VeloPyro(a).fit(max_epochs=2, batch_size=64, progress_bar=False)
    m.write_to_adata(n_samples=3, seed=5)
    bs = posterior.QUERY_BATCH_SIZE
    np.testing.assert_array_equal(a.layers["velocity"], m.get_velocity(n_samples=3, seed=5, batch_size=bs))
    np.testing.assert_array_equal(a.layers["velocity_u"],
                                  m.get_velocity(n_samples=3, seed=5, batch_size=bs, mode="unspliced"))
    np.testing.assert_array_equal(a.layers["fit_t"], m.get_latent_time(n_samples=3, seed=5, batch_size=bs))
    np.testing.assert_array_equal(a.layers["fit_state"],
                                  m.get_state_assignment(n_samples=3, seed=5, batch_size=bs, hard=True))
    np.testing.assert_array_equal(a.obs["latent_time"],
                                  m.get_latent_time(n_samples=3, seed=5, batch_size=bs, level="cell"))
    # z_loc averaged over the draws (as before the one-pass write): equal up to float rounding
    np.testing.assert_allclose(a.obsm["X_velopyro"], m.get_latent_representation(batch_size=bs), rtol=1e-5, atol=1e-6)
    fu, fs = m.get_expression_fit(n_samples=3, seed=5, batch_size=bs)
    from velopyro import _scvelo

    ref = _scvelo.standardised_fit_stats(m._kinetic[0], m._kinetic[1], fu, fs)
    np.testing.assert_allclose(a.var["fit_likelihood"], ref["likelihood"], rtol=1e-6)
    ll = m.get_log_likelihood(n_samples=3, seed=5, per_gene=True, batch_size=bs)
    assert ll.shape[0] == 3


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_write_to_store_equals_in_memory(sim, tmp_path, suffix):
    a = sim.copy()
    m = velopyro.VeloPyro(a).fit(max_epochs=1, batch_size=64, progress_bar=False)
    m.write_to_adata(n_samples=2)
    path = str(tmp_path / f"out{suffix}")
    m.write_to_adata(n_samples=2, store=path)
    b = ad.read_h5ad(path) if suffix == ".h5ad" else ad.read_zarr(path)
    assert list(b.obs_names) == list(a.obs_names)
    for k in ("velocity", "velocity_u", "fit_t", "fit_state", "fit_tau", "fit_tau_"):
        np.testing.assert_array_equal(b.layers[k], a.layers[k])
    np.testing.assert_array_equal(b.obsm["X_velopyro"], a.obsm["X_velopyro"])
    np.testing.assert_array_equal(b.obs["latent_time"], a.obs["latent_time"])
    for k in a.var.columns:
        np.testing.assert_allclose(np.asarray(b.var[k], float), np.asarray(a.var[k], float), rtol=1e-6)
    assert b.uns["velopyro"]["n_samples"] == 2


@pytest.mark.parametrize("kind", ["h5ad", "zarr"])
def test_disk_model_writes_into_its_file(files, tmp_path, kind):
    import shutil

    path = str(tmp_path / f"own.{kind}")
    (shutil.copytree if kind == "zarr" else shutil.copy)(files[kind], path)
    m = velopyro.VeloPyro(path).fit(max_epochs=1, batch_size=64, progress_bar=False)
    m.write_to_adata(n_samples=1)
    b = ad.read_h5ad(path) if kind == "h5ad" else ad.read_zarr(path)
    assert {"Ms", "Mu", "velocity", "fit_t"} <= set(b.layers)
    np.testing.assert_array_equal(b.layers["velocity"], m.get_velocity(n_samples=1, batch_size=256))
    assert "latent_time" in m.adata.obs and "fit_alpha" in b.var
    # a second write replaces the outputs; the model still reads its inputs
    m.write_to_adata(n_samples=1)
    assert np.isfinite(m.get_latent_time(n_samples=1)).all()
    # saved and loaded onto the path, it answers as before
    m.save(tmp_path / "model")
    loaded = velopyro.VeloPyro.load(tmp_path / "model", path)
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=1), m.get_velocity(n_samples=1))


def test_disk_errors(sim, files, tmp_path):
    backed = ad.read_h5ad(files["h5ad"], backed="r")
    m = velopyro.VeloPyro(backed)
    m.is_trained = True
    with pytest.raises(VelopyroInputError, match="store="):
        m.write_to_adata()
    small = str(tmp_path / "small.h5ad")
    sim[:10].copy().write_h5ad(small)
    with pytest.raises(VelopyroInputError, match="holds 10 cells"):
        m.write_to_adata(store=small)
    assert "velocity" not in ad.read_h5ad(small).layers  # left unchanged
    with pytest.raises(VelopyroInputError, match="not found"):
        velopyro.VeloPyro(files["h5ad"], spliced_layer="nope", unspliced_layer="Mu")
    with pytest.raises(VelopyroInputError, match="does not exist"):
        velopyro.VeloPyro(str(tmp_path / "missing.h5ad"))
    a = sim.copy()
    a.layers["Ms"] = sp.csc_matrix(a.layers["Ms"])
    path = str(tmp_path / "csc.h5ad")
    a.write_h5ad(path)
    with pytest.raises(VelopyroInputError, match="CSR"):
        velopyro.VeloPyro(path)
    bad = sim.copy()
    bad.layers["Mu"][:, 3] = 0.5
    path = str(tmp_path / "const.h5ad")
    bad.write_h5ad(path)
    with pytest.raises(VelopyroInputError, match="gene3"):
        velopyro.VeloPyro(path)
    for bad_value, what in ((np.nan, "NaN"), (-1.0, "negative")):
        bad = sim.copy()
        bad.layers["Ms"][7, 2] = bad_value
        path = str(tmp_path / f"bad{what}.h5ad")
        bad.write_h5ad(path)
        with pytest.raises(VelopyroInputError, match=what):
            velopyro.VeloPyro(path)
    with pytest.raises(RuntimeError, match="in memory"):
        _ = m.data.u
    with pytest.raises(VelopyroInputError, match="preprocess"):
        velopyro.pp.preprocess(backed)


def test_simulate_to_disk(tmp_path):
    p1 = velopyro.datasets.simulate_to_disk(tmp_path / "a.h5ad", 700, 8, seed=2, chunk_cells=100, truth_layers=True)
    p2 = velopyro.datasets.simulate_to_disk(tmp_path / "a.zarr", 700, 8, seed=2, chunk_cells=100, truth_layers=True)
    a, b = ad.read_h5ad(p1), ad.read_zarr(p2)
    assert a.shape == (700, 8) and a.X is None
    np.testing.assert_array_equal(a.layers["Ms"], b.layers["Ms"])
    assert (a.layers["Ms"] >= 0).all() and a.layers["Ms"].std(0).min() > 0
    assert set(np.unique(a.layers["true_state"])) <= {0, 1, 2, 3}
    assert a.obs["true_t"].between(0, 20).all()
    # later chunks are not copies of the first
    assert not np.array_equal(a.layers["Ms"][:100], a.layers["Ms"][100:200])
    with pytest.raises(FileExistsError):
        velopyro.datasets.simulate_to_disk(p1, 10, 8)
    m = velopyro.VeloPyro(p1)
    assert m.n_cells == 700


class _Log1pCounts(velopyro.likelihoods.Poisson):
    """A count likelihood whose kinetic scale is ``log1p`` of normalised counts, written in the two-argument
    form (no per-gene statistics)."""

    name = "log1p_counts_test"

    def to_kinetic_scale(self, x, size_factor):
        return np.log1p(x / size_factor[:, None]).astype(np.float32)


class _HalfMaxCounts(velopyro.likelihoods.Poisson):
    """A count likelihood whose kinetic scale is normalised counts over half of each gene's maximum, with its
    statistics (the maxima) from the reference cells."""

    name = "half_max_counts_test"

    def kinetic_scale_stats(self, x, size_factor):
        return 0.5 * (x / size_factor[:, None]).max(0)

    def to_kinetic_scale(self, x, size_factor, stats=None):
        norm = x / size_factor[:, None]
        return norm / (self.kinetic_scale_stats(x, size_factor) if stats is None else stats)


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory) -> tuple[ad.AnnData, str]:
    a = velopyro.datasets.simulate(120, 10, seed=2, likelihood="poisson")
    path = str(tmp_path_factory.mktemp("kin") / "counts.h5ad")
    a.write_h5ad(path)
    return a, path


def test_custom_kinetic_scale_on_disk(counts_file, tmp_path):
    """A custom count likelihood's to_kinetic_scale gives the kinetic scale on disk as in memory: the rows
    write_to_adata reads, and the fit_likelihood it writes from them for the same fitted model."""
    a, path = counts_file
    mem = velopyro.VeloPyro(a.copy(), likelihood=_Log1pCounts())
    disk = velopyro.VeloPyro(path, likelihood=_Log1pCounts())
    for x, y in zip(disk._kinetic_rows(0, disk.n_cells), mem._kinetic, strict=True):
        np.testing.assert_array_equal(x, y)
    mem.fit(max_epochs=1, batch_size=64, progress_bar=False)
    with pytest.warns(UserWarning, match="not registered"):
        mem.save(tmp_path / "model")
    local = str(tmp_path / "own.h5ad")
    a.write_h5ad(local)
    disk = velopyro.VeloPyro.load(tmp_path / "model", local, likelihood=_Log1pCounts())
    mem.write_to_adata(n_samples=2, seed=1)
    disk.write_to_adata(n_samples=2, seed=1)
    np.testing.assert_allclose(ad.read_h5ad(local).var["fit_likelihood"], mem.adata.var["fit_likelihood"],
                               rtol=1e-6)


def test_custom_kinetic_scale_subsample_on_disk(counts_file, monkeypatch):
    """When the statistics' subsample leaves cells out, chunks read from disk are mapped with the likelihood's
    kinetic_scale_stats of the subsample; a two-argument to_kinetic_scale is refused with a message."""
    a, path = counts_file
    monkeypatch.setattr(_disk, "STAT_ENTRIES", 10 * 40)
    lik = _HalfMaxCounts()
    disk = velopyro.VeloPyro(path, likelihood=lik)
    assert len(disk._sub.rows) < disk.n_cells
    sub = disk._sub
    u, s = disk._kinetic_rows(10, 50)
    stats = lik.kinetic_scale_stats(sub.u, sub.size_factor_u)
    sf = disk.data.size_factor_u[10:50, 0].numpy()
    np.testing.assert_array_equal(u, lik.to_kinetic_scale(a.layers["unspliced"][10:50], sf, stats=stats))
    assert s.shape == (40, 10)
    two_args = velopyro.VeloPyro(path, likelihood=_Log1pCounts())
    with pytest.raises(VelopyroInputError, match="stats"):
        two_args._kinetic_rows(0, 10)
