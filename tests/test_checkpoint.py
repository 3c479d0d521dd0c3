"""Checkpoints that resume: a fit killed with SIGKILL continues exactly as an uninterrupted fit."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)

from velopyro import VeloPyro
from velopyro._validation import VelopyroInputError
from velopyro.checkpoint import CHECKPOINT_FILE, load_checkpoint
from velopyro.datasets import simulate

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

# one start of gamma / beta: these tests follow one fit's checkpoint file (rate_init="select" below)
MODEL = dict(n_hidden=32, n_latent=4, rate_init="constant")
FIT = dict(batch_size=64, train_size=0.8, patience=1000, seed=3, progress_bar=False)
CHILD = textwrap.dedent("""
    import sys, anndata, torch
    from velopyro import VeloPyro
    torch.set_num_threads(int(sys.argv[3]))
    adata = anndata.read_h5ad(sys.argv[1])
    VeloPyro(adata, **{model}).fit(max_epochs=100000, checkpoint_dir=sys.argv[2], checkpoint_every=1, **{fit})
""")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sim.h5ad"
    simulate(n_cells=160, n_genes=8, seed=0).write_h5ad(path)
    return path


def _kill_after_checkpoint(data_file: Path, ckpt_dir: Path) -> subprocess.CompletedProcess:
    code = CHILD.format(model=MODEL, fit=FIT)
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_file), str(ckpt_dir), str(torch.get_num_threads())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not (ckpt_dir / CHECKPOINT_FILE).exists():
        if proc.poll() is not None:
            pytest.fail(f"the training process exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint after 120 s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_killed_fit_resumes_exactly(data_file, tmp_path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    done = _kill_after_checkpoint(data_file, ckpt_dir)
    assert done.returncode == -signal.SIGKILL
    # the file is readable without unpickling code, and the fit was cut short of its 100,000 epochs
    saved = torch.load(ckpt_dir / CHECKPOINT_FILE, weights_only=True)
    killed_at = saved["epoch"]
    assert 1 <= killed_at < 1000
    assert saved["history"]["epoch"] == list(range(1, killed_at + 1))
    max_epochs = killed_at + 3

    adata = anndata.read_h5ad(data_file)
    resumed = VeloPyro(adata, **MODEL).fit(max_epochs=max_epochs, resume=ckpt_dir, **FIT)
    reference = VeloPyro(adata.copy(), **MODEL).fit(max_epochs=max_epochs, **FIT)

    # same epochs, losses, best epoch: bit for bit (the same float32 operations in the same order)
    for key in ("epoch", "train_loss", "validation_loss", "kl_weight", "best_epoch", "stopped_early"):
        assert resumed.history[key] == reference.history[key], key
    assert resumed.history["epoch"] == list(range(1, max_epochs + 1))
    for mod in ("model", "guide"):
        got, want = getattr(resumed, mod).state_dict(), getattr(reference, mod).state_dict()
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), f"{mod}.{name}"
    np.testing.assert_array_equal(resumed.validation_indices, reference.validation_indices)
    # the resumed fit kept checkpointing into the same directory, up to its last epoch
    assert load_checkpoint(ckpt_dir)["epoch"] == max_epochs


def test_checkpoint_contents_and_mismatches(data_file, tmp_path) -> None:
    adata = anndata.read_h5ad(data_file)
    model = VeloPyro(adata, **MODEL)
    model.fit(max_epochs=2, checkpoint_dir=tmp_path, checkpoint_every=2, **FIT)
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert state["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary files left
    assert state["rng"]["torch"].dtype == torch.uint8 and state["rng"]["generator"].dtype == torch.uint8
    assert state["early_stopping"]["best_epoch"] == model.history["best_epoch"]
    assert state["history"]["validation_loss"] == model.history["validation_loss"]
    # a finished fit resumed with the same settings changes nothing
    again = VeloPyro(adata, **MODEL).fit(max_epochs=2, resume=tmp_path, **FIT)
    for name, value in model.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value)

    with pytest.raises(VelopyroInputError, match="lr=0.01"):
        VeloPyro(adata, **MODEL).fit(max_epochs=3, resume=tmp_path, **{**FIT, "lr": 0.02})
    with pytest.raises(VelopyroInputError, match="n_hidden=32"):
        VeloPyro(adata, n_hidden=16, n_latent=4, rate_init="constant").fit(max_epochs=3, resume=tmp_path, **FIT)
    with pytest.raises(VelopyroInputError, match="rate_init='constant'"):
        VeloPyro(adata, n_hidden=32, n_latent=4).fit(max_epochs=3, resume=tmp_path, **FIT)
    with pytest.raises(VelopyroInputError, match="split"):
        VeloPyro(adata, **MODEL).fit(max_epochs=3, resume=tmp_path, **{**FIT, "train_size": 0.7})
    with pytest.raises(VelopyroInputError, match="already holds a checkpoint"):
        VeloPyro(adata, **MODEL).fit(max_epochs=1, checkpoint_dir=tmp_path, **FIT)
    with pytest.raises(VelopyroInputError, match="cells"):
        VeloPyro(adata[:100].copy(), **MODEL).fit(max_epochs=1, resume=tmp_path, **FIT)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        VeloPyro(adata, **MODEL).fit(max_epochs=1, resume=tmp_path / "none", **FIT)
    with pytest.raises(VelopyroInputError, match="checkpoint_every"):
        VeloPyro(adata, **MODEL).fit(max_epochs=1, checkpoint_dir=tmp_path / "x", checkpoint_every=0, **FIT)


def test_select_checkpoints_each_start_and_resumes_to_the_same_fit(data_file, tmp_path) -> None:
    """rate_init="select" keeps one checkpoint per start, in a subdirectory named for it; resuming
    a finished select fit, or one whose second start never began, gives the uncheckpointed fit bit for bit."""
    adata = anndata.read_h5ad(data_file)
    model = dict(n_hidden=32, n_latent=4, rate_init="select")
    reference = VeloPyro(adata.copy(), **model).fit(max_epochs=3, **FIT)
    checkpointed = VeloPyro(adata.copy(), **model).fit(max_epochs=3, checkpoint_dir=tmp_path, **FIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["constant", "steady_state"]
    assert load_checkpoint(tmp_path / "constant")["epoch"] == 3
    shutil.rmtree(tmp_path / "steady_state")  # as if the fit had stopped before the second start began
    resumed = VeloPyro(adata.copy(), **model).fit(max_epochs=3, resume=tmp_path, **FIT)
    for fit in (checkpointed, resumed):
        assert fit.history["rate_init"] == reference.history["rate_init"]
        assert fit.history["rate_init_candidates"] == reference.history["rate_init_candidates"]
        for name, value in reference.model.state_dict().items():
            assert torch.equal(fit.model.state_dict()[name], value), name
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        VeloPyro(adata, **model).fit(max_epochs=1, resume=tmp_path / "none", **FIT)
