"""Data-parallel training through PyTorch Lightning: 2 CPU processes (gloo) against one process."""

import numpy as np
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from torch.utils.data import DistributedSampler

from velopyro import VeloPyro
from velopyro._validation import VelopyroInputError
from velopyro.datasets import simulate

pytest.importorskip("lightning")
pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

MODEL = dict(n_hidden=32, n_latent=4, rate_init="constant")  # one fit per call: curves compared
# 160 training cells, global batch 32: 5 global batches per epoch, 16 cells per process under DDP
FIT = dict(batch_size=32, train_size=0.8, max_epochs=8, progress_bar=False, accelerator="cpu")


@pytest.fixture(scope="module")
def sim():
    return build_sim()


def build_sim():
    return simulate(n_cells=200, n_genes=8, seed=0)


def build_ddp(sim, seed: int = 0) -> VeloPyro:
    # "ddp_fork": the two gloo processes are forked from this one (no re-import, ~3 s here); "ddp_spawn"
    # gives the same numbers but starts two fresh interpreters (~40 s on this machine)
    return VeloPyro(sim, **MODEL).fit(devices=2, strategy="ddp_fork", seed=seed, **FIT)


@pytest.fixture(scope="module")
def ddp(sim):
    return build_ddp(sim)


def _single(sim, seed: int) -> VeloPyro:
    return VeloPyro(sim, **MODEL).fit(devices=1, strategy="auto", seed=seed, **FIT)


def test_distributed_sampler_gives_the_same_global_batches() -> None:
    cells, per_process, world = list(range(160)), 16, 2
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(cells, num_replicas=world, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        one = DistributedSampler(cells, num_replicas=1, rank=0, shuffle=True, seed=7)
        one.set_epoch(epoch)
        single = list(one)
        for k in range(len(cells) // (per_process * world)):
            union = sorted(shards[0][k * per_process:(k + 1) * per_process]
                           + shards[1][k * per_process:(k + 1) * per_process])
            assert union == sorted(single[k * per_process * world:(k + 1) * per_process * world])


def ddp_curve_metrics(sim, ddp: VeloPyro, seed: int = 0) -> dict:
    """The DDP fit's train-loss curve, the single-process one at its seed, and the seed-to-seed noise (the
    largest distance to the single-process curve at seed + 1)."""
    one, other_seed = _single(sim, seed), _single(sim, seed + 1)
    one_curve = np.array(one.history["train_loss"])
    noise = np.abs(np.array(other_seed.history["train_loss"]) - one_curve).max()
    return {"ddp_curve": np.array(ddp.history["train_loss"]), "one_curve": one_curve, "noise": noise}


@pytest.mark.slow  # forks two gloo processes (ddp_fork)
def test_ddp_loss_curve_close_to_single_process(sim, ddp) -> None:
    h = ddp.history
    assert h["epoch"] == list(range(1, 9))
    assert all(np.isfinite(h["validation_loss"]))
    assert h["best_epoch"] == 1 + int(np.argmin(h["validation_loss"]))
    m = ddp_curve_metrics(sim, ddp)
    ddp_curve, one_curve, noise = m["ddp_curve"], m["one_curve"], m["noise"]
    # Tolerance. The gradient of each DDP step is that of the same global batch as the single process
    # (the test above), but three things differ: each process draws its own Monte Carlo noise and dropout
    # masks, and BatchNorm normalises 16 cells rather than 32 (SyncBatchNorm needs a GPU). The first two are
    # the noise that separates two single-process fits with different seeds, so the DDP curve must lie
    # within twice that seed-to-seed distance (here 2 x 0.7 nats per cell while the loss falls by ~18)
    assert np.abs(ddp_curve - one_curve).max() <= 2 * noise
    # the curve falls far more than the tolerance: over fit seeds 0-9 on 1 and 2 threads the fall was 7.2 to
    # 40 times the seed-to-seed noise (python -m benchmarks.test_thresholds, results/test_thresholds/results.md)
    assert one_curve[0] - one_curve[-1] > 4 * noise


@pytest.mark.slow  # forks two gloo processes (ddp_fork)
def test_ddp_result_trained_saves_and_loads(sim, ddp, tmp_path) -> None:
    # the weights trained in the worker processes came back to this one
    fresh = VeloPyro(sim, **MODEL)
    assert not torch.equal(fresh.model.kinetics.raw_alpha, ddp.model.kinetics.raw_alpha)
    assert ddp.history["settings"]["strategy"] == "ddp_fork"
    ddp.save(tmp_path / "m")
    loaded = VeloPyro.load(tmp_path / "m", sim)
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), ddp.get_velocity(n_samples=2))
    assert loaded.history["train_loss"] == ddp.history["train_loss"]


@pytest.mark.slow  # forks two gloo processes (ddp_fork)
def test_ddp_from_disk_equals_in_memory(sim, ddp, tmp_path) -> None:
    """Lightning processes read the cells from an .h5ad (each opens the file): the same global batches as in
    memory, so the same loss curve."""
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    disk = VeloPyro(str(path), **MODEL).fit(devices=2, strategy="ddp_fork", seed=0, **FIT)
    np.testing.assert_allclose(disk.history["train_loss"], ddp.history["train_loss"], rtol=1e-6)


def test_bad_requests(sim) -> None:
    model = VeloPyro(sim, **MODEL)
    with pytest.raises(VelopyroInputError, match="not divisible by the 2 processes"):
        model.fit(devices=2, strategy="ddp_fork", seed=0, **{**FIT, "batch_size": 33})
    with pytest.raises(VelopyroInputError, match="validation cells"):
        model.fit(devices=2, strategy="ddp_fork", seed=0, **{**FIT, "train_size": 1.0})
    with pytest.raises(VelopyroInputError, match="jit, preload"):
        model.fit(devices=2, strategy="ddp_fork", jit=True, **FIT)


def test_checkpoints_with_devices_refused(sim, tmp_path) -> None:
    """Checkpoints are single-process: with devices/strategy a clear error, before anything is written."""
    from velopyro.cli import main

    model = VeloPyro(sim, **MODEL)
    with pytest.raises(VelopyroInputError, match="checkpoint_dir is not available with devices/strategy"):
        model.fit(devices=2, strategy="ddp_fork", checkpoint_dir=tmp_path / "ck", **FIT)
    assert not (tmp_path / "ck").exists()
    VeloPyro(sim, **MODEL).fit(max_epochs=1, batch_size=32, progress_bar=False, checkpoint_dir=tmp_path / "one")
    with pytest.raises(VelopyroInputError, match="resume is not available with devices/strategy"):
        model.fit(devices=2, strategy="ddp_fork", resume=tmp_path / "one", **FIT)
    src = tmp_path / "in.h5ad"
    sim.write_h5ad(src)
    code = main(["fit", str(src), "-o", str(tmp_path / "out.h5ad"), "--max-epochs", "1", "--devices", "2",
                 "--accelerator", "cpu", "--strategy", "ddp_fork", "--checkpoint-dir", str(tmp_path / "ck2"),
                 "--quiet"])
    assert code != 0 and not (tmp_path / "ck2").exists() and not (tmp_path / "out.h5ad").exists()


@pytest.mark.slow  # forks two gloo processes (ddp_fork)
def test_cli_devices(sim, tmp_path) -> None:
    import anndata as ad

    from velopyro.cli import main

    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    sim.write_h5ad(src)
    code = main(["fit", str(src), "-o", str(dst), "--max-epochs", "2", "--batch-size", "32", "--n-samples", "1",
                 "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_fork", "--quiet"])
    assert code == 0
    res = ad.read_h5ad(dst)
    assert list(res.uns["velopyro"]["history"]["epoch"]) == [1, 2]
    assert np.isfinite(res.layers["velocity"]).all()


def early_stopping_history(sim, seed: int = 0) -> dict:
    """A Lightning fit with early stopping (patience 1 after a 3-epoch KL warm-up): its history."""
    fit = {**FIT, "max_epochs": 40}
    return VeloPyro(sim, **MODEL).fit(devices=1, strategy="auto", seed=seed, patience=1, kl_warmup_epochs=3,
                                      **fit).history


def test_early_stopping_after_warmup(sim) -> None:
    # Lightning's EarlyStopping on the reduced validation ELBO, counting only after the KL warm-up
    h = early_stopping_history(sim)
    assert h["stopped_early"] and len(h["epoch"]) < 40
    assert h["best_epoch"] >= 3 and h["epoch"][-1] == h["best_epoch"] + 1
    val = np.array(h["validation_loss"])
    assert val[h["best_epoch"] - 1] == val[2:].min()


def test_lightning_receives_every_training_option(monkeypatch) -> None:
    """fit(devices=2) hands the TrainConfig's eps and min_delta (and the rest) to the Lightning loop."""
    import velopyro.lightning

    seen = []

    def fake_train_lightning(model, guide, data, **kwargs):
        seen.append(kwargs)
        return {"epoch": [1], "train_loss": [1.0], "validation_loss": [1.0], "best_epoch": 1,
                "best_validation_loss": 1.0 + len(seen), "stopped_early": False}

    monkeypatch.setattr(velopyro.lightning, "train_lightning", fake_train_lightning)
    sim = velopyro.datasets.simulate(n_cells=60, n_genes=4, seed=0)
    model = VeloPyro(sim, n_hidden=8, n_latent=2, rate_init="select")
    model.fit(max_epochs=1, batch_size=32, progress_bar=False, devices=2, eps=0.05, min_delta=0.25, clip_norm=3.0,
              patience=7)
    assert len(seen) == 2  # one Lightning fit per start of rate_init="select"
    for kw in seen:
        assert (kw["eps"], kw["min_delta"], kw["clip_norm"], kw["patience"]) == (0.05, 0.25, 3.0, 7)
    assert model.history["rate_init"] == "constant"  # the lower of the two (fake) validation losses
