"""The training loop (velopyro.train): KL warm-up, penalty fade, best-state restore, parameter groups.

Each test fits a tiny model (120 cells x 4 genes, a few epochs) through :func:`velopyro.train.train_svi`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from pyro import poutine

import velopyro
from velopyro import train
from velopyro.datasets import simulate

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(seed: int = 0) -> velopyro.VeloPyro:
    return velopyro.VeloPyro(simulate(120, 4, seed=seed), n_hidden=16)


def _record_weights(module: torch.nn.Module) -> list[tuple[float, float]]:
    """Record ``(kl_weight, penalty_weight)`` of every call of the module during training."""
    calls: list[tuple[float, float]] = []
    forward = module.forward

    def recording(*args, **kwargs):
        calls.append((float(args[6]), float(args[7])))  # after idx, u, s, two size factors, batch codes
        return forward(*args, **kwargs)

    module.forward = recording
    return calls


def _fit(vp: velopyro.VeloPyro, **kwargs) -> dict:
    split = train.split_indices(vp.n_cells, 0.8, 0)
    opts = dict(train_idx=split[0], validation_idx=split[1], batch_size=64, progress_bar=False,
                early_stopping=False, seed=0)
    opts.update(kwargs)
    return train.train_svi(vp.model, vp.guide, vp.data, **opts)


def test_kl_warmup_and_penalty_fade_follow_the_schedule() -> None:
    vp = _tiny()
    model_calls, guide_calls = _record_weights(vp.model), _record_weights(vp.guide)
    hist = _fit(vp, max_epochs=6, kl_warmup_epochs=4, penalty_fade=True)
    expected = [min(1.0, e / 4) for e in range(1, 7)]
    assert hist["kl_weight"] == pytest.approx(expected)
    # 96 training cells in minibatches of 64: two steps per epoch, each with the epoch's weights
    steps = [(w, 1.0 - w) for w in expected for _ in range(2)]
    warm = [c for c in model_calls if c[0] < 1.0]  # the steps of epochs 1-3 (validation runs at weight 1)
    np.testing.assert_allclose(warm, steps[:6], rtol=1e-6)
    np.testing.assert_allclose([c for c in guide_calls if c[0] < 1.0], steps[:6], rtol=1e-6)
    # no fade: the penalty keeps weight 1 while the KL warms up
    vp = _tiny()
    calls = _record_weights(vp.model)
    _fit(vp, max_epochs=2, kl_warmup_epochs=4)
    np.testing.assert_allclose([c for c in calls if c[0] < 1.0], [(0.25, 1.0)] * 2 + [(0.5, 1.0)] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        _fit(_tiny(), max_epochs=1, penalty_fade=True)


def test_the_weights_scale_the_z_site_and_the_penalty() -> None:
    vp = _tiny()
    args = vp.data.batch(torch.arange(10), torch.device("cpu"))
    traces = {}
    for w in (1.0, 0.25):
        kl_w, pen_w = torch.tensor(w), torch.tensor(1.0 - w if w < 1 else 1.0)
        traces[w] = (poutine.trace(vp.model).get_trace(*args, kl_w, pen_w, n_cells=120),
                     poutine.trace(vp.guide).get_trace(*args, kl_w, pen_w, n_cells=120))
    for tr in traces[0.25]:  # the plate's subsampling scale N / B = 12 times the warm-up weight
        assert float(tr.nodes["z"]["scale"]) == pytest.approx(12 * 0.25)
        assert float(tr.nodes["pi"]["scale"]) == pytest.approx(12.0)
    for tr in traces[1.0]:
        assert float(tr.nodes["z"]["scale"]) == pytest.approx(12.0)
    pen = {w: float(tr[0].nodes["switch_penalty"]["fn"].log_prob(torch.zeros(())).sum().detach())
           for w, tr in traces.items()}
    assert pen[1.0] < 0 and pen[0.25] == pytest.approx(0.75 * pen[1.0], rel=1e-5)


def test_the_best_validation_state_is_restored(monkeypatch) -> None:
    scripted = iter([5.0, 3.0, 4.0, 6.0, 7.0])  # the best validation loss is epoch 2's
    snapshots: list[dict[str, torch.Tensor]] = []
    real = train.elbo_per_cell

    def scripted_validation(model, guide, *args, **kwargs):
        real(model, guide, *args, **kwargs)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(train, "elbo_per_cell", scripted_validation)
    vp = _tiny()
    hist = _fit(vp, max_epochs=5)
    assert hist["best_epoch"] == 2 and hist["validation_loss"] == [5.0, 3.0, 4.0, 6.0, 7.0]
    final = vp.model.state_dict()
    moved = [k for k in final if not torch.equal(snapshots[1][k], snapshots[-1][k])]
    assert "kinetics.raw_alpha" in moved  # training went on after epoch 2, so restoring is visible
    for k, v in final.items():
        torch.testing.assert_close(v, snapshots[1][k], rtol=0, atol=0, msg=f"{k} is not epoch 2's")


def test_early_stopping_counts_patience_after_the_best_epoch(monkeypatch) -> None:
    losses = iter([5.0, 3.0] + [4.0] * 10)
    monkeypatch.setattr(train, "elbo_per_cell", lambda *a, **k: next(losses))
    hist = _fit(_tiny(), max_epochs=12, early_stopping=True, patience=3)
    assert hist["stopped_early"] and hist["epoch"] == [1, 2, 3, 4, 5] and hist["best_epoch"] == 2


def test_parameter_groups_exclude_raw_parameters_from_weight_decay() -> None:
    vp = _tiny()
    groups = train._parameter_groups(vp.model, vp.guide, 0.3)
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    names = {id(p): n for m in (vp.model, vp.guide) for n, p in m.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    kept = [names[id(p)] for p in groups[1]["params"]]
    assert {"kinetics.raw_alpha", "kinetics.raw_beta", "kinetics.raw_gamma", "kinetics.raw_t_s"} <= set(kept)
    assert any(n.startswith("likelihood.raw_") for n in kept)
    assert all(n.split(".")[-1].startswith("raw_") for n in kept)
    assert decayed and not any(n.split(".")[-1].startswith("raw_") for n in decayed)
    all_params = {id(p) for m in (vp.model, vp.guide) for p in m.parameters()}
    assert len(decayed) + len(kept) == len(all_params)  # every parameter once
    # one AdamW step with zero gradients: decay shrinks network weights, never the raw parameters
    optim = torch.optim.AdamW(groups, lr=0.1)
    before = {n: p.detach().clone() for m in (vp.model, vp.guide) for n, p in m.named_parameters()}
    for g in groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    optim.step()
    after = {n: p.detach() for m in (vp.model, vp.guide) for n, p in m.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in kept)
    assert any(not torch.equal(before[n], after[n]) for n in decayed)


def test_history_keys_and_split() -> None:
    hist = _fit(_tiny(), max_epochs=2)
    assert set(hist) == {"epoch", "train_loss", "validation_loss", "seconds", "kl_weight", "best_epoch",
                         "stopped_early", "converged", "interrupted", "batch_size", "best_validation_loss"}
    assert hist["converged"] is True and hist["interrupted"] is False  # early stopping off: ran as asked
    assert hist["epoch"] == [1, 2] and hist["kl_weight"] == [1.0, 1.0]
    tr, va = train.split_indices(100, 0.9, 3)
    assert len(tr) == 90 and len(va) == 10 and np.intersect1d(tr, va).size == 0


def test_train_config_holds_every_option_and_fit_passes_them_through() -> None:
    with pytest.raises(TypeError, match="unknown training option.*'max_epoch'.*max_epochs"):
        train.TrainConfig.from_options(max_epoch=3)
    cfg = train.TrainConfig.from_options(train.TrainConfig(lr=0.5), max_epochs=3)
    assert (cfg.lr, cfg.max_epochs, cfg.batch_size) == (0.5, 3, 256)
    vp = _tiny()
    vp.fit(train.TrainConfig(max_epochs=5, batch_size=32), max_epochs=2, progress_bar=False, train_size=0.75)
    assert vp.history["epoch"] == [1, 2] and len(vp.validation_indices) == 30
    assert vp.history["settings"]["batch_size"] == 32
    with pytest.raises(TypeError, match="unknown training option"):
        vp.fit(max_epoch=2)

