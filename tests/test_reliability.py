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

from velopyro import VeloPyro, pp
from velopyro import distributions as vd
from velopyro._validation import VelopyroInputError
from velopyro.cli import main
from velopyro.datasets import simulate

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
