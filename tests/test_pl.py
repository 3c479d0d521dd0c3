"""velopyro.pl: every figure on a tiny fitted model returns a Figure with labelled axes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("matplotlib")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from _fixtures import SHORT_FITS  # tests/ is on sys.path (pytest rootdir-relative import)
from matplotlib.figure import Figure  # noqa: E402

import velopyro  # noqa: E402
from velopyro import pl, tl  # noqa: E402
from velopyro._validation import VelopyroInputError  # noqa: E402

pytestmark = pytest.mark.filterwarnings(SHORT_FITS)  # short fits on purpose (_fixtures.SHORT_FITS)

matplotlib.use("Agg")


def _knn_graph(x: np.ndarray, k: int = 10) -> sp.csr_matrix:
    from scipy.spatial import cKDTree

    _, idx = cKDTree(x).query(x, k=k + 1)
    rows = np.repeat(np.arange(len(x)), k)
    g = sp.csr_matrix((np.ones(len(rows)), (rows, idx[:, 1:].ravel())), shape=(len(x), len(x)))
    return sp.csr_matrix(((g + g.T) > 0).astype(np.float64))


@pytest.fixture(scope="module")
def fitted():
    adata = velopyro.datasets.simulate(n_cells=300, n_genes=20, seed=0)
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=3, progress_bar=False)
    model.write_to_adata(n_samples=3)
    x = adata.layers["Ms"] - adata.layers["Ms"].mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    adata.obsm["X_umap"] = (u[:, :2] * s[:2]).astype(np.float32)
    adata.obsp["connectivities"] = _knn_graph(adata.layers["Ms"])
    adata.obs["clusters"] = np.where(adata.obs["true_t"] < 10, "early", "late")
    adata.obs["clusters"] = adata.obs["clusters"].astype("category")
    return adata, model


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(fig: Figure) -> list:
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    return axes


def test_phase_portraits(fitted, tmp_path) -> None:
    adata, _ = fitted
    out = tmp_path / "pp.png"
    fig = pl.phase_portraits(adata, n_genes=4, save=out)
    assert isinstance(fig, Figure)
    axes = _labelled(fig)
    assert len(axes) == 4
    assert axes[0].get_xlabel() == "spliced (Ms)" and axes[0].get_ylabel() == "unspliced (Mu)"
    assert len(axes[0].lines) == 1  # the fitted trajectory
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"induction", "induction steady state", "repression", "repression steady state"} <= set(labels)
    assert out.stat().st_size > 0
    # default choice: the best-fitted genes, in decreasing R^2
    r2 = tl.gene_fit_r2(adata)
    best = adata.var_names[np.argsort(-r2)[:4]]
    assert [ax.get_title().split()[0] for ax in axes] == list(best)


def test_phase_portraits_named_genes_and_colors(fitted) -> None:
    adata, _ = fitted
    fig = pl.phase_portraits(adata, genes=["gene1", "gene3"], color_by="fit_t")
    assert len(_labelled(fig)) == 2
    fig = pl.phase_portraits(adata, genes="gene2", color_by="clusters")
    assert len(_labelled(fig)) == 1
    with pytest.raises(VelopyroInputError, match="not_a_gene"):
        pl.phase_portraits(adata, genes=["not_a_gene"])
    with pytest.raises(VelopyroInputError, match="color_by"):
        pl.phase_portraits(adata, genes=["gene1"], color_by="nothing")


def test_phase_portraits_count_likelihood() -> None:
    adata = velopyro.datasets.simulate(n_cells=300, n_genes=8, seed=1, likelihood="poisson")
    model = velopyro.VeloPyro(adata, likelihood="poisson", size_factor_key="true_size_factor")
    model.fit(max_epochs=2, progress_bar=False)
    model.write_to_adata(n_samples=2)
    fig = pl.phase_portraits(adata, n_genes=2)
    ax = _labelled(fig)[0]
    assert ax.get_xlabel() == "spliced (counts / size factor)"
    # the curve is on the count scale: it reaches the data's range, not [0, ~1]
    assert ax.lines[0].get_xdata().max() > 5
    # exactly the Poisson mean at size factor 1, scale * trajectory + background, of the panel's gene
    g = list(adata.var_names).index(ax.get_title().split()[0])
    u, s = _trajectory(adata, g)
    var = adata.var.iloc[g]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), var["fit_scale_s"] * s + var["fit_background_s"], rtol=1e-5)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), var["fit_scale_u"] * u + var["fit_background_u"], rtol=1e-5)


def _trajectory(adata, g: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted kinetics of gene ``g`` on the phase portraits' time grid."""
    import torch

    from velopyro import kinetics

    var = adata.var.iloc[g]
    t = torch.linspace(0.0, float(adata.uns["velopyro"]["config"]["t_max"]), 400, dtype=torch.float64)
    keys = ("fit_alpha", "fit_beta", "fit_gamma", "fit_t_")
    rates = [torch.tensor(float(var[k]), dtype=torch.float64) for k in keys]
    u, s = kinetics.trajectory(t, *rates)
    return u.numpy(), s.numpy()


def test_phase_portraits_draw_a_custom_likelihoods_own_mean() -> None:
    import torch

    from velopyro import likelihoods
    from velopyro.distributions import Normal

    class Squashed(likelihoods.Normal):
        """A Normal whose mean is 0.5 * kinetic mean + 0.2 (a saturating detector, say)."""

        name = "test_squashed_normal"

        def dist(self, mean, state, modality, size_factor=None):
            return Normal(0.5 * mean + 0.2, self.state_scale[state] * self.sigma(modality))

    likelihoods.register_likelihood(Squashed)
    try:
        adata = velopyro.datasets.simulate(n_cells=200, n_genes=6, seed=2)
        model = velopyro.VeloPyro(adata, likelihood="test_squashed_normal")
        model.fit(max_epochs=2, progress_bar=False)
        model.write_to_adata(n_samples=2)
        fig = pl.phase_portraits(adata, genes=["gene2"])
        line = _labelled(fig)[0].lines[0]
        u, s = _trajectory(adata, 2)
        np.testing.assert_allclose(line.get_xdata(), 0.5 * s + 0.2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(line.get_ydata(), 0.5 * u + 0.2, rtol=1e-5, atol=1e-6)
        assert np.abs(line.get_xdata() - s).max() > 0.1  # not the default (identity) mean
        # tl's per-cell fit goes through the same mean: cells in the repression steady state sit at 0.5 * 0 + 0.2
        from velopyro._phase import _phase_data

        _, _, fit_u, fit_s = _phase_data(adata, np.arange(6))
        off = adata.layers["fit_state"] == 3
        assert off.any()
        np.testing.assert_allclose(fit_u[off], 0.2, atol=1e-6)
        np.testing.assert_allclose(fit_s[off], 0.2, atol=1e-6)
        assert np.isfinite(tl.gene_fit_r2(adata)).all()
        with torch.no_grad():
            lik = model.likelihood
            assert torch.allclose(lik.expected_observation(torch.ones(6), "s"), torch.full((6,), 0.7))
    finally:
        likelihoods.LIKELIHOODS.pop("test_squashed_normal", None)
    # an AnnData fitted with a likelihood this session does not know: a clear error, not a wrong curve
    with pytest.raises(VelopyroInputError, match="test_squashed_normal.*not registered"):
        pl.phase_portraits(adata, genes=["gene2"])


def test_latent_time(fitted) -> None:
    adata, _ = fitted
    fig = pl.latent_time(adata, basis="umap")
    assert isinstance(fig, Figure)
    assert _labelled(fig)[0].get_xlabel() == "UMAP 1"
    assert any(ax.get_ylabel() == "latent time" for ax in fig.axes)  # the colour bar
    with pytest.raises(VelopyroInputError, match="X_tsne"):
        pl.latent_time(adata, basis="tsne")


def test_velocity_stream_computes_embedding(fitted) -> None:
    adata, _ = fitted
    a = adata.copy()
    assert "velocity_umap" not in a.obsm
    fig = pl.velocity_stream(a, basis="umap", color="clusters")
    assert isinstance(fig, Figure)
    assert "velocity_umap" in a.obsm
    ax = _labelled(fig)[0]
    assert ax.get_legend() is not None
    fig = pl.velocity_stream(a, color="latent_time")
    assert _labelled(fig)


def test_loss_curve_from_model_and_adata(fitted) -> None:
    adata, model = fitted
    for obj in (model, adata):
        fig = pl.loss_curve(obj)
        ax = _labelled(fig)[0]
        assert ax.get_xlabel() == "epoch"
        assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"train", "validation"}
    with pytest.raises(VelopyroInputError):
        pl.loss_curve(velopyro.datasets.simulate(n_cells=10, n_genes=3))


def test_unfitted_adata_raises() -> None:
    adata = velopyro.datasets.simulate(n_cells=20, n_genes=3)
    with pytest.raises(VelopyroInputError, match="write_to_adata"):
        pl.phase_portraits(adata)


def test_ppc_names_delegate() -> None:
    # the posterior predictive plots live in velopyro.pl._ppc and are reached through velopyro.pl
    from velopyro.pl import _ppc

    for name in ("ppc_density", "pit_histogram", "rootogram"):
        assert getattr(pl, name) is getattr(_ppc, name)
        assert name in dir(pl)
    assert set(pl.__all__) <= set(dir(pl))
    with pytest.raises(AttributeError, match="no_such_plot"):
        pl.no_such_plot  # noqa: B018
    with pytest.raises(AttributeError, match="_grid"):
        pl._grid  # noqa: B018  (private names of _ppc are not delegated)


# ---- scanpy-style API: ax=, show=, save=, color= -------------------------------------------------------------


def test_latent_time_colours_cells_and_names_clusters(fitted, tmp_path) -> None:
    adata, _ = fitted
    fig, ax = plt.subplots()
    out = pl.latent_time(adata, ax=ax, show=False, save=tmp_path / "lt.png")
    assert out is fig and (tmp_path / "lt.png").stat().st_size > 0
    pts = ax.collections[0]
    t = adata.obs["latent_time"].to_numpy()
    order = np.argsort(t, kind="stable")
    np.testing.assert_allclose(pts.get_array().data, t[order], rtol=1e-6)
    np.testing.assert_allclose(pts.get_offsets(), adata.obsm["X_umap"][order], rtol=1e-5)
    # one name per cluster, at the median position of its cells
    names = {txt.get_text(): txt.get_position() for txt in ax.texts}
    assert set(names) == {"early", "late"}
    early = adata.obs["clusters"].to_numpy() == "early"
    np.testing.assert_allclose(names["early"], np.median(adata.obsm["X_umap"][early], axis=0), rtol=1e-5)
    assert ax.get_title() == "velopyro latent time" and ax.get_xlabel() == "UMAP 1"
    # categorical colour: one scatter per cluster and a legend; groups=None: no names
    fig2, ax2 = plt.subplots()
    pl.latent_time(adata, color="clusters", groups=None, ax=ax2)
    assert len(ax2.collections) == 2 and not ax2.texts
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["early", "late"]
    with pytest.raises(VelopyroInputError, match="groups='nothing'"):
        pl.latent_time(adata, groups="nothing")


def test_velocity_interval_draws_the_written_interval(fitted) -> None:
    adata, model = fitted
    a = adata.copy()
    with pytest.raises(VelopyroInputError, match="get_velocity_interval"):
        pl.velocity_interval(a, genes="gene1")
    lo, hi = model.get_velocity_interval(level=0.8, n_samples=6, write=False)
    a.layers["velocity_lower"], a.layers["velocity_upper"] = lo, hi
    a.uns["velocity_interval"] = {"level": 0.8, "n_samples": 6, "mode": "spliced"}
    fig, axes = plt.subplots(1, 2)
    out = pl.velocity_interval(a, genes=["gene1", "gene3"], ax=axes, show=False)
    assert out is fig
    t = a.obs["latent_time"].to_numpy()
    order = np.argsort(t, kind="stable")
    for k, g in enumerate((1, 3)):
        ax = axes[k]
        assert ax.get_title().startswith(f"gene{g}  (sign certain in ")
        assert ax.get_xlabel() == "latent time" and ax.get_ylabel() == "velocity (ds/dt)"
        band, pts = ax.collections[0], ax.collections[1]
        np.testing.assert_allclose(pts.get_offsets()[:, 0], t[order], rtol=1e-6)
        np.testing.assert_allclose(pts.get_offsets()[:, 1], a.layers["velocity"][order, g], rtol=1e-5, atol=1e-7)
        # the band's outline holds exactly the interval's bounds
        ys = band.get_paths()[0].vertices[:, 1]
        assert np.isclose(ys.max(), hi[:, g].max(), rtol=1e-5) and np.isclose(ys.min(), lo[:, g].min(), rtol=1e-5)
        certain = np.mean((lo[:, g] > 0) | (hi[:, g] < 0))
        assert f"{certain:.0%}" in ax.get_title()
    assert "80% interval" in [t.get_text() for t in axes[-1].get_legend().get_texts()]
    with pytest.raises(VelopyroInputError, match="2 axes for 1 panels"):
        pl.velocity_interval(a, genes="gene1", ax=axes)
    fig = pl.velocity_interval(a, n_genes=3, color=None)
    assert len([x for x in fig.axes if x.get_visible()]) == 3


def test_every_figure_takes_ax_show_save(fitted, tmp_path, monkeypatch) -> None:
    adata, model = fitted
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    fig, ax = plt.subplots()
    assert pl.velocity_stream(adata, color="clusters", ax=ax, show=True, save=tmp_path / "s.png") is fig
    assert ax.get_title() == "velopyro velocity (umap)" and ax.get_legend() is not None
    fig, ax = plt.subplots()
    assert pl.loss_curve(model, ax=ax, show=True) is fig
    np.testing.assert_allclose(ax.lines[0].get_ydata(), model.history["train_loss"])
    fig, axes = plt.subplots(1, 2)
    assert pl.phase_portraits(adata, genes=["gene0", "gene2"], color="clusters", ax=axes, show=True) is fig
    np.testing.assert_allclose(np.sort(axes[1].collections[0].get_offsets()[:, 0]),
                               np.sort(adata.layers["Ms"][:, 2]), rtol=1e-5)
    assert shown == [1, 1, 1] and (tmp_path / "s.png").exists()
    with pytest.raises(VelopyroInputError, match="color='nothing'"):
        pl.velocity_stream(adata, color="nothing", ax=ax)


def test_ppc_figures_take_ax_and_show(monkeypatch) -> None:
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    rng = np.random.default_rng(0)
    values = rng.random((500, 3))
    values[:, 1] = values[:, 1] ** 3  # the least uniform gene: the one shown beside the pooled panel
    fig, axes = plt.subplots(1, 2)
    out = pl.pit_histogram(values, gene_names=["a", "b", "c"], max_genes=1, n_bins=10, ax=axes, show=True)
    assert out is fig and shown == [1] and not fig._suptitle
    heights = [p.get_height() for p in axes[0].patches[:10]]  # the bars (then the 99% band)
    np.testing.assert_allclose(heights, np.histogram(values.ravel(), bins=10, range=(0, 1), density=True)[0])
    assert axes[1].get_title().startswith("b\nKS = ")
    with pytest.raises(VelopyroInputError, match="1 axes for 2 panels"):
        pl.pit_histogram(values, max_genes=1, ax=axes[0])
    fig = pl.pit_histogram(values, max_genes=1)  # its own figure keeps its title
    assert fig._suptitle.get_text().startswith("PIT of the posterior predictive")
