"""Reliability and security (issue 10): safe loading, atomic outputs, transactional preprocessing, reuse on
other data, small data, interrupted fits, messages, global random state and threads.

Every failure tested here also checks that the user's AnnData, input file and previous output are unchanged
(byte for byte for files).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)

from velopyro import VeloPyro, pp
from velopyro import distributions as vd
from velopyro._validation import VelopyroInputError
from velopyro.cli import main
from velopyro.datasets import simulate

# fits stop at a few epochs on purpose (a test needs a fitted model, not a converged one)
pytestmark = pytest.mark.filterwarnings(SHORT_FITS)

FIT = dict(max_epochs=3, progress_bar=False, seed=0)


@pytest.fixture(scope="module")
def sim():
    return simulate(n_cells=200, n_genes=8, seed=1)


@pytest.fixture(scope="module")
def fitted(sim):
    return VeloPyro(sim, n_hidden=16).fit(**FIT)  # default batch_size 256 > 180 training cells


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree_sha(d: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(Path(d).iterdir())}


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _snapshot(adata) -> dict:
    """Everything a failed step could have changed, by value."""
    return {
        "shape": adata.shape,
        "obs_names": list(adata.obs_names), "var_names": list(adata.var_names),
        "X": None if adata.X is None else _dense(adata.X).copy(),
        "layers": {k: _dense(v).copy() for k, v in adata.layers.items()},
        "obs": adata.obs.copy(), "var": adata.var.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        "obsp": sorted(adata.obsp.keys()), "varm": sorted(adata.varm.keys()),
        "uns": repr(dict(adata.uns)),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k in ("obs", "var"):
            pd.testing.assert_frame_equal(a[k], b[k])
        elif k in ("layers", "obsm"):
            assert a[k].keys() == b[k].keys(), k
            for name in a[k]:
                np.testing.assert_array_equal(a[k][name], b[k][name])
        elif k == "X":
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


def _counts(n_cells: int, n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    s = rng.poisson(rng.uniform(2, 20, n_genes), (n_cells, n_genes)).astype(np.float32)
    u = rng.poisson(rng.uniform(1, 10, n_genes), (n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(X=s.copy(), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.layers["spliced"], adata.layers["unspliced"] = s, u
    return adata


# ---- 2. safe loading ------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command (what a malicious model.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_save_holds_tensors_only_and_round_trips(fitted, sim, tmp_path):
    fitted.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert torch.is_tensor(state["train_indices"]) and torch.is_tensor(state["validation_indices"])
    loaded = VeloPyro.load(tmp_path / "m", sim)
    np.testing.assert_array_equal(loaded.validation_indices, fitted.validation_indices)
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), fitted.get_velocity(n_samples=2))


def test_load_does_not_run_a_pickle_payload(fitted, sim, tmp_path):
    fitted.save(tmp_path / "m")
    marker = tmp_path / "PWNED"
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, tmp_path / "m" / "model.pt")
    with pytest.raises(VelopyroInputError, match="cannot be loaded as tensors only"):
        VeloPyro.load(tmp_path / "m", sim)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "bad_json", "missing", "wrong_content"])
def test_damaged_model_directory_is_a_clear_error(fitted, sim, tmp_path, damage):
    d = tmp_path / "m"
    fitted.save(d)
    model_pt, cfg = d / "model.pt", d / "config.json"
    if damage == "truncated":
        model_pt.write_bytes(model_pt.read_bytes()[: model_pt.stat().st_size // 2])
    elif damage == "empty":
        model_pt.write_bytes(b"")
    elif damage == "bad_json":
        cfg.write_text(cfg.read_text()[:50])
    elif damage == "missing":
        model_pt.unlink()
    else:
        torch.save({"model": {}, "guide": {}, "train_indices": torch.zeros(1), "validation_indices": torch.zeros(1)},
                   model_pt)
    with pytest.raises(VelopyroInputError) as err:
        VeloPyro.load(d, sim)
    assert "\n" not in str(err.value)


# ---- 3. atomic outputs ----------------------------------------------------------------------------


def _failing_writer(original):
    """A writer that leaves half a file at its destination and then fails as a full disk does."""

    def write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89HDF\r\n partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_save_failure_keeps_previous_model(fitted, tmp_path, monkeypatch):
    d = tmp_path / "m"
    fitted.save(d)
    before = _tree_sha(d)

    def bad_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", bad_save)
    with pytest.raises(OSError, match="No space left"):
        fitted.save(d, overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        fitted.save(tmp_path / "new")
    assert _tree_sha(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no partial or temporary directory left


def test_save_overwrite_replaces_only_a_model_directory(fitted, tmp_path):
    d = tmp_path / "m"
    fitted.save(d)
    fitted.save(d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.pt"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other than a velopyro model"):
        fitted.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, sim):
    path = tmp_path_factory.mktemp("cli") / "in.h5ad"
    a = sim[:, :4].copy()
    for k in [k for k in a.layers if k not in ("Ms", "Mu")]:
        del a.layers[k]
    a.write_h5ad(path)
    return path


CLI_FIT = ["--max-epochs", "2", "--n-samples", "2", "-q", "--device", "cpu"]


def test_cli_write_failure_leaves_previous_output_and_input(small_h5ad, tmp_path, monkeypatch, capsys):
    inp = tmp_path / "in.h5ad"
    inp.write_bytes(small_h5ad.read_bytes())
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous output")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_writer(ad.AnnData.write_h5ad))
    for target in (out, inp):  # -o equal to the input too
        h_in, h_out = _sha(inp), _sha(out)
        code = main(["fit", str(inp), "-o", str(target), *CLI_FIT, "--save-model", str(tmp_path / "model")])
        err = capsys.readouterr().err.strip()
        assert code == 1
        assert err.startswith("velopyro: error: could not write") and "\n" not in err and "unchanged" in err
        assert _sha(inp) == h_in and _sha(out) == h_out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]  # no temp file, no model


def test_cli_output_equal_to_input_is_replaced_safely(small_h5ad, tmp_path, capsys):
    inp = tmp_path / "in.h5ad"
    inp.write_bytes(small_h5ad.read_bytes())
    assert main(["fit", str(inp), "-o", str(inp), *CLI_FIT]) == 0
    res = ad.read_h5ad(inp)
    assert "velocity" in res.layers and res.n_obs == 200
    assert oct(inp.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_cli_creates_no_output_folder_before_validation(tmp_path, capsys):
    inp = tmp_path / "in.h5ad"
    _counts(30).write_h5ad(inp)
    h = _sha(inp)
    out = tmp_path / "new_dir" / "out.h5ad"
    code = main(["fit", str(inp), "-o", str(out), "--no-preprocess", *CLI_FIT])
    assert code == 1 and "'Ms' not found" in capsys.readouterr().err
    assert not (tmp_path / "new_dir").exists() and _sha(inp) == h


# ---- 4. transactional preprocessing -------------------------------------------------------------


def test_preprocess_on_10_cells_names_the_cause_and_changes_nothing():
    adata = _counts(10)
    before = _snapshot(adata)
    with pytest.raises(VelopyroInputError, match="10 cells, not more than n_neighbors=30"):
        pp.preprocess(adata, min_shared_counts=0)
    _assert_same(before, _snapshot(adata))


def test_preprocess_failure_in_a_late_step_leaves_adata_unchanged(monkeypatch):
    adata = _counts(60)
    before = _snapshot(adata)

    def boom(adata, *args, **kwargs):
        adata.layers["Ms"] = adata.layers["spliced"]  # a half-done step
        raise RuntimeError("moments failed")

    monkeypatch.setattr(pp, "moments", boom)  # after filter_and_normalize has rewritten the layers and X
    with pytest.raises(RuntimeError, match="moments failed"):
        pp.preprocess(adata, min_shared_counts=0, n_neighbors=10, n_pcs=5)
    _assert_same(before, _snapshot(adata))
    monkeypatch.undo()
    adata.layers["Ms"], adata.layers["Mu"] = adata.layers["spliced"] + 1, adata.layers["unspliced"] + 1
    pp.preprocess(adata, min_r2=-1.0)  # existing moments: scale and select_genes, committed in place
    assert adata.layers["Ms"].max() == 1.0 and "preprocess" in adata.uns["velopyro_pp"]


@pytest.mark.parametrize("with_moments", [False, True])
def test_preprocess_on_backed_adata_is_a_clear_error(tmp_path, with_moments):
    a = _counts(40)
    if with_moments:
        a.layers["Ms"], a.layers["Mu"] = a.layers["spliced"] / 10, a.layers["unspliced"] / 10
    path = tmp_path / "b.h5ad"
    a.write_h5ad(path)
    h = _sha(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(VelopyroInputError, match=r"adata.to_memory\(\)"):
        pp.preprocess(backed, min_shared_counts=0, n_neighbors=10)
    backed.file.close()
    assert _sha(path) == h


# ---- 5. reuse on other data ---------------------------------------------------------------------


def test_write_to_adata_checks_gene_and_cell_names(fitted, sim):
    reversed_genes = sim[:, ::-1].copy()
    before = _snapshot(reversed_genes)
    with pytest.raises(VelopyroInputError, match="var_names differ .*another order"):
        fitted.write_to_adata(reversed_genes, n_samples=1)
    _assert_same(before, _snapshot(reversed_genes))
    other_cells = sim.copy()
    other_cells.obs_names = [f"x{i}" for i in range(sim.n_obs)]
    with pytest.raises(VelopyroInputError, match="obs_names differ .*200 cells the fit does not have"):
        fitted.write_to_adata(other_cells, n_samples=1)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_load_onto_other_genes_or_cells(fitted, sim, tmp_path):
    fitted.save(tmp_path / "m")
    with pytest.raises(VelopyroInputError, match="genes differ"):
        VeloPyro.load(tmp_path / "m", sim[:, ::-1].copy())
    for other in (sim[:50].copy(), sim[np.r_[0:200, 0:100]].copy()):  # fewer and more cells
        other.obs_names_make_unique()
        with pytest.warns(UserWarning, match="split does not apply"):
            m = VeloPyro.load(tmp_path / "m", other)
        assert m.train_indices.size == 0 and m.validation_indices.size == 0
        assert m.get_velocity(n_samples=1).shape == other.shape


# ---- 6. small data, interrupts, messages --------------------------------------------------------


def test_small_data_fits_with_the_default_batch_size(fitted):
    assert fitted.is_trained
    n_train = len(fitted.train_indices)
    assert fitted.history["batch_size"] == n_train == 180
    assert fitted.history["settings"]["batch_size"] == n_train


def test_ctrl_c_keeps_the_best_state_and_the_model_stays_usable(sim, tmp_path, monkeypatch):
    import velopyro.train as tr

    calls = {"n": 0}
    original = tr.elbo_per_cell

    def interrupt_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tr, "elbo_per_cell", interrupt_in_epoch_3)
    m = VeloPyro(sim, n_hidden=16)
    with pytest.warns(UserWarning, match="interrupted"):
        m.fit(max_epochs=10, progress_bar=False, seed=0)
    assert m.history["interrupted"] is True and m.history["epoch"] == [1, 2]
    assert m.is_trained and np.isfinite(m.get_velocity(n_samples=1)).all()
    m.save(tmp_path / "m")
    calls["n"] = 2
    with pytest.raises(KeyboardInterrupt):  # interrupted before any epoch finished: nothing to keep
        VeloPyro(sim, n_hidden=16).fit(max_epochs=10, progress_bar=False, seed=0, train_size=0.9)


def test_messages_for_tiny_and_half_constant_data(sim):
    with pytest.raises(VelopyroInputError, match="1 cell\\(s\\); velopyro needs at least 3"):
        VeloPyro(sim[:1].copy())
    half = sim.copy()
    half.layers["Mu"] = half.layers["Mu"].copy()
    half.layers["Mu"][:, 2] = 0.0
    before = _snapshot(half)
    with pytest.raises(VelopyroInputError, match="1 gene\\(s\\) are constant .*'gene2'"):
        VeloPyro(half)
    _assert_same(before, _snapshot(half))
    with pytest.raises(VelopyroInputError, match="seed must be an integer"):
        VeloPyro(sim, n_hidden=16).fit(seed=-5, **{k: v for k, v in FIT.items() if k != "seed"})


def test_cli_messages(tmp_path, small_h5ad, capsys):
    missing = tmp_path / "does_not_exist.h5ad"
    assert main(["fit", str(missing), "-o", str(tmp_path / "o.h5ad"), "--seed", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "does_not_exist" not in err  # refused before the input is read
    assert main(["fit", str(small_h5ad), "-o", str(tmp_path / "o.h5ad"), "--device", "foo", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("velopyro: error: device 'foo'") and "\n" not in err
    a = ad.read_h5ad(small_h5ad)
    del a.layers["Mu"]
    a.write_h5ad(tmp_path / "no_mu.h5ad")
    assert main(["fit", str(tmp_path / "no_mu.h5ad"), "-o", str(tmp_path / "o.h5ad"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "has layer 'Ms' but not 'Mu'" in err and "\n" not in err
    assert not (tmp_path / "o.h5ad").exists()


# ---- 7. determinism and global state -------------------------------------------------------------


def _global_draws() -> tuple:
    return np.random.rand(), torch.rand(1).item(), random.random()  # noqa: NPY002 (the user's legacy global)


@pytest.mark.parametrize("call", ["init", "fit", "get_velocity", "get_latent_time", "get_log_likelihood",
                                  "posterior_predictive", "pit", "write_to_adata"])
def test_user_random_state_is_left_alone(sim, fitted, call):
    actions = {
        "init": lambda: VeloPyro(sim, n_hidden=16),
        "fit": lambda: VeloPyro(sim, n_hidden=16).fit(max_epochs=1, progress_bar=False, seed=3),
        "get_velocity": lambda: fitted.get_velocity(n_samples=2),
        "get_latent_time": lambda: fitted.get_latent_time(n_samples=2),
        "get_log_likelihood": lambda: fitted.get_log_likelihood(n_samples=2),
        "posterior_predictive": lambda: fitted.posterior_predictive(n_samples=2),
        "pit": lambda: fitted.pit(n_samples=2),
        "write_to_adata": lambda: fitted.write_to_adata(n_samples=2, copy=True),
    }
    np.random.seed(123)  # noqa: NPY002
    torch.manual_seed(123)
    random.seed(123)
    expected = _global_draws()
    np.random.seed(123)  # noqa: NPY002
    torch.manual_seed(123)
    random.seed(123)
    actions[call]()
    assert _global_draws() == expected


def test_dirichlet_draws_do_not_depend_on_the_thread_count():
    c = (torch.rand(3 * vd.BLOCK_ROWS + 17, 4) + 0.2)
    draws = []
    for n_threads in (1, 2, 5):
        torch.manual_seed(7)
        draws.append(vd.parallel_dirichlet(c, n_threads))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_two_fits_in_two_threads(sim, fitted):
    results, errors = {}, []
    n_threads = torch.get_num_threads()  # the same kernels as the fixture's fit (see the README)

    def run(name: str) -> None:
        try:
            torch.set_num_threads(n_threads)
            results[name] = VeloPyro(sim, n_hidden=16).fit(**FIT).get_velocity(n_samples=2)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = fitted.get_velocity(n_samples=2)  # the same seed and settings, fitted alone
    np.testing.assert_array_equal(results["a"], expected)
    np.testing.assert_array_equal(results["b"], expected)


def test_model_does_not_share_memory_with_the_users_layers(sim):
    a = sim.copy()
    m = VeloPyro(a, n_hidden=16)
    s0 = m.data.s.clone()
    a.layers["Ms"][:] = 0.0
    assert torch.equal(m.data.s, s0)


# ---- issue 22: the second pass of hostile probes -------------------------------------------------------


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def sim_h5ad(tmp_path_factory, sim):
    path = tmp_path_factory.mktemp("issue22") / "sim.h5ad"
    sim.write_h5ad(path)
    return path


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_22_1_n_samples_must_be_a_positive_int(fitted, sim_h5ad, tmp_path, n):
    before = _snapshot(fitted.adata)
    with pytest.raises(VelopyroInputError, match="n_samples must be a positive integer"):
        fitted.write_to_adata(n_samples=n)
    _assert_same(before, _snapshot(fitted.adata))
    store = tmp_path / "copy.h5ad"
    store.write_bytes(sim_h5ad.read_bytes())
    h = _sha(store)
    for target in (store, tmp_path / "new.h5ad"):
        with pytest.raises(VelopyroInputError, match="n_samples must be a positive integer"):
            fitted.write_to_adata(n_samples=n, store=target)
    assert _sha(store) == h and not (tmp_path / "new.h5ad").exists()
    for getter in (fitted.get_velocity, fitted.get_latent_time, fitted.get_state_assignment):
        with pytest.raises(VelopyroInputError, match="n_samples must be a positive integer"):
            getter(n_samples=n)
    with pytest.raises(VelopyroInputError, match="n_samples must be a positive integer"):
        fitted.get_velocity(n_samples=n, return_samples=True)


def test_22_2_failing_cli_run_keeps_the_previous_output(small_h5ad, tmp_path, monkeypatch, capsys):
    prev = tmp_path / "prev.h5ad"
    prev.write_bytes(b"previous output")
    h = _sha(prev)

    def failing_save(self, path, overwrite=False):
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(VeloPyro, "save", failing_save)
    code = main(["fit", str(small_h5ad), "-o", str(prev), *CLI_FIT, "--save-model", str(tmp_path / "m")])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and "could not save the model" in line and "Permission denied" in line
    assert _sha(prev) == h and sorted(p.name for p in tmp_path.iterdir()) == ["prev.h5ad"]
    monkeypatch.undo()
    # colliding outputs are refused before the fit, with the previous output unchanged
    for extra in (["--save-model", str(prev)], ["--checkpoint-dir", str(tmp_path / "d"), "--save-model",
                                                 str(tmp_path / "d")]):
        code = main(["fit", str(small_h5ad), "-o", str(prev), *CLI_FIT, *extra])
        line = _one_line(capsys.readouterr().err)
        assert code == 1 and "overlap" in line
        assert _sha(prev) == h and sorted(p.name for p in tmp_path.iterdir()) == ["prev.h5ad"]
    code = main(["fit", str(small_h5ad), "-o", str(prev), *CLI_FIT, "--checkpoint-dir", str(prev)])
    assert code == 1 and "also the --checkpoint-dir directory" in _one_line(capsys.readouterr().err)
    assert _sha(prev) == h


def test_22_2_model_directory_filled_during_the_run(small_h5ad, tmp_path, monkeypatch, capsys):
    prev, d = tmp_path / "prev.h5ad", tmp_path / "m"
    prev.write_bytes(b"previous output")
    h = _sha(prev)
    original = VeloPyro.save

    def racing_save(self, path, overwrite=False):  # another process creates the target meanwhile
        original(self, path, overwrite)
        d.mkdir(exist_ok=True)
        (d / "theirs.txt").write_text("not ours")

    monkeypatch.setattr(VeloPyro, "save", racing_save)
    code = main(["fit", str(small_h5ad), "-o", str(prev), *CLI_FIT, "--save-model", str(d)])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and "created by another process" in line and "overwrite=True" not in line
    assert _sha(prev) == h and sorted(p.name for p in tmp_path.iterdir()) == ["m", "prev.h5ad"]
    assert sorted(p.name for p in d.iterdir()) == ["theirs.txt"]


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_22_3_store_write_checks_cell_and_gene_names(fitted, sim, tmp_path, fmt):
    other = sim.copy()
    other.obs_names = [f"x{i}" for i in range(sim.n_obs)]
    cases = ((other, "obs_names differ"), (sim[:, ::-1].copy(), "var_names differ .*another order"))
    for i, (a, what) in enumerate(cases):
        path = tmp_path / f"other{i}.{fmt}"
        a.write_h5ad(path) if fmt == "h5ad" else a.write_zarr(path)
        h = _sha(path) if fmt == "h5ad" else {p.relative_to(path): _sha(p) for p in path.rglob("*") if p.is_file()}
        with pytest.raises(VelopyroInputError, match=what):
            fitted.write_to_adata(n_samples=1, store=path)
        assert h == (_sha(path) if fmt == "h5ad" else
                     {p.relative_to(path): _sha(p) for p in path.rglob("*") if p.is_file()})


def test_22_4_view_of_a_backed_adata_is_refused(sim_h5ad):
    backed = ad.read_h5ad(sim_h5ad, backed="r")
    try:
        for view in (backed[:100], backed[:, :4]):
            with pytest.raises(VelopyroInputError, match="view .* of the backed AnnData .*to_memory"):
                VeloPyro(view)
    finally:
        backed.file.close()


@pytest.mark.parametrize("option", [dict(t_max=-1.0), dict(t_max=0.0), dict(t_max=float("inf")), dict(n_latent=0),
                                    dict(n_hidden=10**9), dict(n_hidden=1e9), dict(n_layers=0),
                                    dict(dropout_rate=1.0), dict(switch_penalty=-0.1)])
def test_22_5_model_options_are_checked(sim, option):
    name = next(iter(option))
    with pytest.raises(VelopyroInputError, match=f"^{name} must be"):
        VeloPyro(sim, **option)


@pytest.mark.parametrize("edit, needle", [
    ({"t_max": -1}, "t_max must be"), ({"n_hidden": 1e9}, "n_hidden must be"), ({"n_latent": 0}, "n_latent must be"),
    ({"rate_init": 3}, "rate_init must be"), ({"surprise": 1}, "unknown model option"),
    ({"batch_categories": {"batch": "ab"}}, "batch_categories.*must be a list of category names"),
])
def test_22_5_saved_config_is_checked_on_load(fitted, sim, tmp_path, edit, needle):
    import json

    fitted.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(edit)
    path.write_text(json.dumps(meta))
    with pytest.raises(VelopyroInputError, match=f"config.json holds an invalid setting \\({needle}"):
        VeloPyro.load(tmp_path / "m", sim)


def test_22_5_saved_format_is_checked(fitted, sim, tmp_path):
    import json

    fitted.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    for fmt in (99, None, "2"):
        meta["format"] = fmt
        path.write_text(json.dumps(meta))
        with pytest.raises(VelopyroInputError, match="format .* which this velopyro version does not read"):
            VeloPyro.load(tmp_path / "m", sim)


def test_22_6_max_epochs_zero_is_refused(sim):
    m = VeloPyro(sim, n_hidden=16)
    for bad in (0, -3, 2.0):
        with pytest.raises(VelopyroInputError, match="max_epochs must be a positive integer"):
            m.fit(max_epochs=bad, progress_bar=False)
    assert not m.is_trained
    with pytest.raises(RuntimeError, match="not fitted"):
        m.write_to_adata(n_samples=1)


def test_22_7_resume_refuses_other_data(sim, tmp_path):
    opts = dict(batch_size=64, progress_bar=False, seed=0, checkpoint_dir=str(tmp_path / "ck"))
    VeloPyro(sim, n_hidden=16).fit(max_epochs=1, **opts)
    values = sim.copy()
    values.layers["Ms"] = values.layers["Ms"].copy()
    values.layers["Ms"][0, 0] = values.layers["Ms"][0, 0] * 0.5 + 0.01
    names = sim.copy()
    names.obs_names = [f"x{i}" for i in range(sim.n_obs)]
    for other, what in ((values, "other values"), (names, "other cell names")):
        with pytest.raises(VelopyroInputError, match=f"written for other data .*{what}"):
            VeloPyro(other, n_hidden=16).fit(max_epochs=2, resume=str(tmp_path / "ck"),
                                             **{k: v for k, v in opts.items() if k != "checkpoint_dir"})


def test_22_8_covariate_checks():
    two = simulate(n_cells=200, n_genes=8, seed=1, n_batches=2)
    for cats, needle in ((["batch0", "batch0", "batch1"], "more than once"), ("batch0batch1", "list of category"),
                         ([], "is empty")):
        with pytest.raises(VelopyroInputError, match=needle):
            VeloPyro(two, n_hidden=16, batch_key="batch", batch_categories={"batch": cats})
    for key in (123, ["batch", 5], [], None.__class__):
        with pytest.raises(VelopyroInputError, match="batch_key must be an obs column name"):
            VeloPyro(two, n_hidden=16, batch_key=key)
    m = VeloPyro(two, n_hidden=16, batch_key="batch", batch_categories={"batch": ["ghost", "batch0", "batch1"]})
    with pytest.raises(VelopyroInputError, match="reference category 'ghost' .* has no training cells"):
        m.fit(max_epochs=1, progress_bar=False)
    assert not m.is_trained


@pytest.mark.parametrize("kind", ["empty", "text", "directory", "truncated"])
def test_22_9_unreadable_paths_are_one_line_errors(sim_h5ad, tmp_path, kind):
    path = tmp_path / ("d.zarr" if kind == "directory" else "x.h5ad")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("cell,gene\n1,2\n")
    elif kind == "directory":
        path.mkdir()
    else:
        data = sim_h5ad.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VelopyroInputError, match="cannot read the (file|directory) .* as an .h5ad file or a .zarr"):
        VeloPyro(str(path))


def test_22_9_sparse_float16_layers_are_converted(sim):
    a = sim.copy()
    for k in ("Ms", "Mu"):
        m = sp.csr_matrix(a.layers[k])
        m.data = m.data.astype(np.float16)  # scipy cannot densify these itself
        a.layers[k] = m
    model = VeloPyro(a, n_hidden=16)
    np.testing.assert_allclose(model.data.s.numpy(), sim.layers["Ms"], atol=1e-3)


def test_22_9_raw_errors_become_one_line(sim, fitted, tmp_path, small_h5ad, capsys):
    with pytest.raises(VelopyroInputError, match="kl_warmup_epochs must be a non-negative integer"):
        VeloPyro(sim, n_hidden=16).fit(kl_warmup_epochs=-5, max_epochs=1, progress_bar=False)
    code = main(["fit", str(small_h5ad), "-o", str(tmp_path / "o.h5ad"), *CLI_FIT, "--devices", "0"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and line.startswith("velopyro: error: devices must be") and not (tmp_path / "o.h5ad").exists()
    # a model whose data store is deleted before write_to_adata(store=...)
    path = tmp_path / "data.h5ad"
    sim.write_h5ad(path)
    m = VeloPyro(str(path), n_hidden=16).fit(max_epochs=1, progress_bar=False)
    path.unlink()
    with pytest.raises(VelopyroInputError, match="no longer exists"):
        m.write_to_adata(n_samples=1, store=tmp_path / "out.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # save(overwrite=True) onto a symbolic link
    fitted.save(tmp_path / "real")
    before = _tree_sha(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError, match="symbolic link"):
        fitted.save(tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and _tree_sha(tmp_path / "real") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_22_10_messages_name_the_real_problem(sim, fitted, tmp_path, small_h5ad, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(VelopyroInputError, match="is a file, not a directory") as info:
        VeloPyro(sim, n_hidden=16).fit(max_epochs=1, progress_bar=False, checkpoint_dir=str(afile))
    assert "already holds a checkpoint" not in str(info.value) and afile.read_text() == "mine"
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "x": _Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(VelopyroInputError) as info:
        VeloPyro(sim, n_hidden=16).fit(max_epochs=1, progress_bar=False, resume=str(tmp_path))
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value) and not marker.exists()
    assert main(["fit", str(small_h5ad), "-o", str(tmp_path / "o.h5ad"), *CLI_FIT, "--lr", "inf"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "lr=inf" not in err
    for bad in (dict(eps=0.0), dict(lr=float("inf")), dict(lr=0.0)):
        with pytest.raises(VelopyroInputError, match=f"{next(iter(bad))} must be a finite positive number"):
            VeloPyro(sim, n_hidden=16).fit(max_epochs=1, progress_bar=False, **bad)


@pytest.mark.parametrize("bad", [dict(patience=-1), dict(min_delta=-0.5), dict(clip_norm=-1.0), dict(clip_norm=0.0),
                                 dict(weight_decay=-0.01), dict(early_stopping="no"), dict(early_stopping=1),
                                 dict(train_size=1.5), dict(devices=0), dict(num_nodes=0), dict(batch_size=1.5)])
def test_22_11_training_mistakes_are_refused(sim, bad):
    from velopyro.train import TrainConfig

    name = next(iter(bad))
    with pytest.raises(VelopyroInputError, match=f"^{name} must be"):
        TrainConfig(**bad)
    with pytest.raises(VelopyroInputError, match=f"^{name} must be"):
        VeloPyro(sim, n_hidden=16).fit(progress_bar=False, **bad)


def test_22_11_same_layer_and_absurd_counts_are_refused(sim, tmp_path, capsys):
    with pytest.raises(VelopyroInputError, match="spliced_layer and unspliced_layer are both 'Ms'"):
        VeloPyro(sim, "Ms", "Ms")
    raw = _counts(60)
    before = _snapshot(raw)
    with pytest.raises(VelopyroInputError, match="both 'spliced'"):
        pp.preprocess(raw, spliced_layer="spliced", unspliced_layer="spliced", min_shared_counts=0)
    _assert_same(before, _snapshot(raw))
    raw.write_h5ad(tmp_path / "raw.h5ad")
    code = main(["fit", str(tmp_path / "raw.h5ad"), "-o", str(tmp_path / "o.h5ad"), *CLI_FIT,
                 "--spliced-layer", "spliced", "--unspliced-layer", "spliced"])
    assert code == 1 and "both 'spliced'" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o.h5ad").exists()
    a = _counts(60)
    a.layers["spliced"][3, 2] = 1e30
    with pytest.raises(VelopyroInputError, match="counts up to 1e\\+30, above 16777216"):
        VeloPyro(a, likelihood="poisson")


def test_22_12_ctrl_c_during_the_imports_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    original = builtins.__import__

    def interrupted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "train" and level == 1:
            raise KeyboardInterrupt
        return original(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    try:
        code = main(["fit", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "o.h5ad")])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped main (a traceback for the user)")
    finally:
        monkeypatch.undo()
    assert code == 130 and _one_line(capsys.readouterr().err).startswith("velopyro: interrupted")


def test_22_12_ctrl_c_after_wrote_leaves_a_complete_output(small_h5ad, tmp_path, monkeypatch, capsys):
    import builtins
    import signal

    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous output")
    original = builtins.print

    def print_then_sigint(*args, **kwargs):
        original(*args, **kwargs)
        if args and str(args[0]).startswith("wrote "):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C just after the final line

    monkeypatch.setattr(builtins, "print", print_then_sigint)
    try:
        code = main(["fit", str(small_h5ad), "-o", str(out), *CLI_FIT])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped main")
    finally:
        monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 0 and "outputs were written; they are complete" in captured.err
    assert "velocity" in ad.read_h5ad(out).layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_22_every_option_has_one_check():
    import dataclasses
    import inspect

    from velopyro import _validation as v
    from velopyro import api, covariates
    from velopyro.train import TrainConfig

    assert set(v.TRAIN_OPTION_CHECKS) == {f.name for f in dataclasses.fields(TrainConfig)}
    params = set(inspect.signature(VeloPyro.__init__).parameters) - {"self", "adata"}
    assert set(v.MODEL_OPTION_CHECKS) == params
    assert v.RATE_INITS == api.RATE_INITS and v._BATCH_EFFECTS == covariates.BATCH_EFFECTS
    assert v._BATCH_ENCODERS == covariates.BATCH_ENCODERS
    from velopyro import _rng

    assert v._SEED_MAX == _rng.SEED_MAX


def test_22_2_cli_commit_rolls_back_when_a_later_rename_fails(tmp_path, monkeypatch):
    from velopyro import cli

    first, second = tmp_path / "a.png", tmp_path / "b.h5ad"
    first.write_bytes(b"old a")
    second.write_bytes(b"old b")
    outputs = cli._Outputs()
    outputs.file(first, lambda p: p.write_bytes(b"new a"))
    outputs.file(second, lambda p: p.write_bytes(b"new b"))
    original = os.replace

    def failing_replace(src, dst):
        if Path(dst) == second:
            raise OSError(errno.EIO, "I/O error")
        return original(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="I/O error"):
        outputs.commit()
    monkeypatch.undo()
    assert first.read_bytes() == b"old a" and second.read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.h5ad"]  # no temporary or backup left


@pytest.mark.slow  # ~40 s: UMAP's first call compiles
def test_22_2_failing_demo_keeps_the_previous_figures(tmp_path, monkeypatch, capsys):
    from velopyro import cli, datasets, pl

    def small_pancreas():
        a = simulate(n_cells=120, n_genes=12, seed=0, likelihood="poisson")
        a.obs["clusters"] = pd.Categorical(np.where(a.obs["true_t"] > a.obs["true_t"].median(), "late", "early"))
        a.X = a.layers["spliced"].copy()
        return a

    def broken_loss_curve(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "demo"
    out.mkdir()
    for name in (cli.DEMO_H5AD, *cli.DEMO_FIGURES):
        (out / name).write_bytes(b"previous " + name.encode())
    before = _tree_sha(out)
    monkeypatch.setattr(datasets, "pancreas", small_pancreas)
    monkeypatch.setattr(pl, "loss_curve", broken_loss_curve)  # the last figure fails
    code = main(["demo", "--out", str(out), "--max-epochs", "2", "--n-samples", "2", "-q", "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and "No space left" in line
    assert _tree_sha(out) == before  # no figure replaced, nothing added
