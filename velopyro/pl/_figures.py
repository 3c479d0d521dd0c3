"""Figures of a fitted AnnData: phase portraits, latent time, velocity stream, loss curve.

Every function takes the AnnData (or, for :func:`loss_curve`, a model) first, returns the
:class:`matplotlib.figure.Figure`, saves it when ``save`` is a path, draws into the caller's axes when
``ax`` is given (one Axes per panel for :func:`phase_portraits`) and calls ``pyplot.show()`` when
``show=True``; the figures that draw cells take ``color=`` (an ``obs`` column). matplotlib is imported on first
use (``pip install velopyro[plot]``); without a display the non-interactive Agg backend is selected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._phase import _config, _curve, _dense_cols, _gene_rates, _is_count, _layers, _likelihood, _observed, _require_fit
from .._validation import VelopyroInputError

__all__ = ["phase_portraits", "latent_time", "velocity_stream", "loss_curve"]

#: Colours of the four states (order of :data:`velopyro.kinetics.STATE_NAMES`).
STATE_COLORS = ("#e6550d", "#a50f15", "#3182bd", "#9e9e9e")


# --------------------------------------------------------------------------------------------------
# matplotlib
# --------------------------------------------------------------------------------------------------


def _plt() -> Any:
    """Import pyplot lazily; select Agg when there is no display and no backend was chosen."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "velopyro.pl needs matplotlib; install it with: pip install velopyro[plot]"
        ) from err
    headless = (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
                and not os.environ.get("WAYLAND_DISPLAY"))
    if headless and "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, save: str | os.PathLike | None) -> Any:
    if save is not None:
        fig.savefig(os.fspath(save), dpi=150, bbox_inches="tight")
    return fig


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axes)``: a new figure of ``figsize`` when ``ax`` is None, else ``ax`` and its figure."""
    if ax is None:
        fig, ax = _plt().subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _panels(ax: Any, n: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Any, list[Any], bool]:
    """``(figure, n axes, new)`` for a figure of ``n`` panels: a new grid when ``ax`` is None, else ``ax``
    (one Axes for one panel, or a sequence of ``n`` Axes of one figure)."""
    if ax is None:
        ncols = max(1, min(ncols, n))
        nrows = int(np.ceil(n / ncols))
        fig, grid = _plt().subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                                    squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[n:]:
            extra.set_visible(False)
        return fig, axes[:n], True
    axes = [ax] if hasattr(ax, "figure") and not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
    if len(axes) != n:
        raise VelopyroInputError(f"ax holds {len(axes)} axes for {n} panels; pass one Axes per panel (or ax=None)")
    return axes[0].figure, axes, False


def _done(fig: Any, save: str | os.PathLike | None, show: bool | None) -> Any:
    """Save (when ``save`` is a path), show (when ``show``), return the figure."""
    _finish(fig, save)
    if show:
        _plt().show()
    return fig


def _pretty_state(name: str) -> str:
    return name.replace("_", " ")


def _gene_indices(adata: Any, genes: str | Sequence[str] | None, n_genes: int) -> np.ndarray:
    if genes is None:
        from ..tl import gene_fit_r2

        if n_genes < 1:
            raise VelopyroInputError(f"n_genes must be >= 1, got {n_genes}")
        r2 = gene_fit_r2(adata)
        return np.argsort(-r2, kind="stable")[: min(n_genes, adata.n_vars)]
    if isinstance(genes, str):
        genes = [genes]
    names = list(map(str, adata.var_names))
    pos = {g: i for i, g in enumerate(names)}
    missing = [g for g in genes if str(g) not in pos]
    if missing:
        from .._validation import format_names

        raise VelopyroInputError(f"gene(s) {format_names(missing)} not in adata.var_names")
    if not genes:
        raise VelopyroInputError("genes is empty; pass gene names or genes=None for the best-fitted genes")
    return np.array([pos[str(g)] for g in genes])


def _categorical_colors(adata: Any, key: str, cats: Sequence[Any]) -> list[Any]:
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(cats):
        return list(stored)[: len(cats)]
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(len(cats))]


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def phase_portraits(
    adata: Any,
    genes: str | Sequence[str] | None = None,
    n_genes: int = 6,
    color_by: str = "fit_state",
    save: str | os.PathLike | None = None,
    *,
    ncols: int = 3,
    point_size: float = 6.0,
    color: str | None = None,
    ax: Any | None = None,
    show: bool | None = None,
) -> Any:
    """Phase portraits (spliced vs unspliced) with the fitted kinetics drawn over the data.

    Each panel shows one gene: the cells' ``Ms`` (x) against ``Mu`` (y), coloured by the inferred state
    (``layers["fit_state"]``: induction, induction steady state, repression, repression steady
    state), the fitted trajectory from the fit's kinetics and its rates ``var["fit_<rate>"]`` (``fit_alpha``,
    ``fit_beta``, ``fit_gamma``, ``fit_t_`` for the constant kinetics;
    :meth:`velopyro.kinetics.Kinetics.trajectory` over ``[0, t_max]``) as a black line, and
    the switch point (the state at ``t_s``) as a star. The curve is the fitted likelihood's expected
    observation of the trajectory (:meth:`velopyro.likelihoods.Likelihood.expected_observation`, its
    parameters read from ``var["fit_<name>"]``): the trajectory itself for the Normal likelihood; for count
    likelihoods, whose data are drawn as counts divided by the cell's size factor, ``scale * trajectory +
    background``.

    Gene choice: ``genes`` if given, else the ``n_genes`` genes with the highest
    :func:`velopyro.tl.gene_fit_r2` (the share of the variance of (Mu, Ms) explained by the fitted
    kinetics at each cell's inferred time and state).

    Parameters
    ----------
    adata
        AnnData after :meth:`velopyro.VeloPyro.write_to_adata`.
    genes
        Gene name(s) to show; default: the best-fitted genes.
    n_genes
        Number of genes when ``genes`` is None.
    color_by
        ``"fit_state"`` (the inferred states, with a legend), another layer (e.g. ``"fit_t"``,
        ``"velocity"``: a continuous per-gene value) or an ``obs`` column (categorical or numeric).
    save
        Write the figure to this path (format from the suffix).
    ncols
        Panels per row.
    point_size
        Marker size of the cells.
    color
        Same as ``color_by`` (the scanpy-style name; takes precedence when given).
    ax
        Draw into these axes: one Axes per gene (a single Axes for one gene); default a new figure.
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; axes are labelled ``"spliced (Ms)"`` and ``"unspliced (Mu)"`` (the fitted layers),
        or ``"spliced (counts / size factor)"`` etc. for count likelihoods.
    """
    from ..kinetics import STATE_NAMES

    if color is not None:
        color_by = color
    _require_fit(adata, "phase_portraits")
    idx = _gene_indices(adata, genes, n_genes)
    obs_u, obs_s = _observed(adata, idx)
    rates = _gene_rates(adata, idx)
    lik = _likelihood(adata, idx)
    r2 = None
    t_max = float(_config(adata).get("t_max", 20.0))
    t_grid = np.linspace(0.0, t_max, 400)[:, None] * np.ones(len(idx))[None, :]
    cu, cs = _curve(rates, t_grid, lik)
    sw_u, sw_s = _curve(rates, rates["fit_t_"][None, :], lik)
    if genes is None:
        from ..tl import gene_fit_r2

        r2 = gene_fit_r2(adata)[idx]

    s_key, u_key = _layers(adata)
    count = _is_count(adata)
    xlabel = "spliced (counts / size factor)" if count else f"spliced ({s_key})"
    ylabel = "unspliced (counts / size factor)" if count else f"unspliced ({u_key})"

    # colours
    kind, values, cats, norm, cmap = "state", None, None, None, None
    if color_by == "fit_state":
        values = _dense_cols(adata.layers["fit_state"], idx).astype(int)
    elif color_by in adata.layers:
        kind, values, cmap = "continuous", _dense_cols(adata.layers[color_by], idx), "viridis"
    elif color_by in adata.obs:
        col = adata.obs[color_by]
        if col.dtype.kind in "biuf" and not hasattr(col, "cat"):
            kind, cmap = "continuous", "viridis"
            values = np.repeat(np.asarray(col, dtype=np.float64)[:, None], len(idx), axis=1)
        else:
            kind = "categorical"
            col = col.astype("category")
            cats = list(col.cat.categories)
            values = np.repeat(np.asarray(col.cat.codes)[:, None], len(idx), axis=1)
    else:
        raise VelopyroInputError(
            f"color_by={color_by!r} is neither 'fit_state', a layer nor an obs column of adata"
        )
    if kind == "continuous":
        from matplotlib.colors import Normalize

        finite = values[np.isfinite(values)]
        norm = Normalize(*(np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)))

    n = len(idx)
    fig, axes, new = _panels(ax, n, ncols, (3.8, 3.4))
    nrows = int(np.ceil(n / max(1, min(ncols, n))))
    names = np.asarray(adata.var_names)[idx]
    cat_colors = _categorical_colors(adata, color_by, cats) if kind == "categorical" else None
    for k, ax in enumerate(axes):
        x, y, c = obs_s[:, k], obs_u[:, k], values[:, k]
        order = np.argsort(c if kind != "continuous" else np.nan_to_num(c), kind="stable")
        if kind == "continuous":
            sc = ax.scatter(x[order], y[order], c=c[order], s=point_size, cmap=cmap, norm=norm,
                            linewidths=0, rasterized=True)
        else:
            palette = STATE_COLORS if kind == "state" else cat_colors
            ax.scatter(x[order], y[order], c=[palette[int(i)] for i in c[order]], s=point_size,
                       linewidths=0, alpha=0.8, rasterized=True)
        ax.plot(cs[:, k], cu[:, k], color="black", lw=1.8, zorder=3)
        ax.scatter([sw_s[0, k]], [sw_u[0, k]], marker="*", s=140, color="gold", edgecolors="black",
                   linewidths=0.8, zorder=4)
        title = str(names[k]) if r2 is None else f"{names[k]}  (R² {r2[k]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.tick_params(labelsize=8)

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="black", lw=1.8, label="fitted trajectory"),
               Line2D([], [], marker="*", ls="", markersize=11, markerfacecolor="gold",
                      markeredgecolor="black", label="switch point")]
    if kind == "state":
        handles = [Line2D([], [], marker="o", ls="", markersize=7, color=STATE_COLORS[i],
                          label=_pretty_state(STATE_NAMES[i])) for i in range(4)] + handles
    elif kind == "categorical":
        handles = [Line2D([], [], marker="o", ls="", markersize=7, color=cat_colors[i], label=str(cat))
                   for i, cat in enumerate(cats)] + handles
    if new:
        fig.tight_layout(rect=(0, 0.07 if nrows > 1 else 0.1, 1, 1))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9)
    else:  # the caller's axes: the legend goes on the last panel
        axes[-1].legend(handles=handles, frameon=False, fontsize=7)
    if kind == "continuous":
        fig.colorbar(sc, ax=axes, shrink=0.6, label=color_by)
    return _done(fig, save, show)


def _embedding(adata: Any, basis: str) -> np.ndarray:
    key = f"X_{basis}"
    if key not in adata.obsm:
        raise VelopyroInputError(
            f"obsm[{key!r}] not found (available: {list(adata.obsm.keys()) or 'none'}); compute the "
            f"embedding first, e.g. scanpy.tl.umap(adata) for basis='umap'"
        )
    return np.asarray(adata.obsm[key], dtype=np.float64)[:, :2]


def _label_embedding(ax: Any, basis: str) -> None:
    name = basis.upper() if len(basis) <= 4 else basis
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])


def latent_time(
    adata: Any,
    basis: str = "umap",
    save: str | os.PathLike | None = None,
    *,
    color: str = "latent_time",
    groups: str | None = "clusters",
    ax: Any | None = None,
    show: bool | None = None,
    cmap: str = "gnuplot",
    point_size: float | None = None,
    key: str | None = None,
) -> Any:
    """Cells on an embedding coloured by the latent time, with the clusters named where they lie.

    Each cell is a point at its embedding coordinates coloured by ``obs[color]`` (a colour bar for a
    numeric column, a legend for a categorical one); each group of ``obs[groups]`` is named at the
    median position of its cells, so the order of the clusters along the latent time is read directly.

    Parameters
    ----------
    adata
        AnnData with ``obs[color]`` (``latent_time`` is written by :meth:`velopyro.VeloPyro.write_to_adata`)
        and ``obsm[f"X_{basis}"]``.
    basis
        Embedding (``"umap"`` reads ``obsm["X_umap"]``).
    save
        Write the figure to this path.
    color
        ``obs`` column to colour the cells by.
    groups
        Categorical ``obs`` column whose names are written on the embedding; the default ``"clusters"``
        is skipped when that column is absent; None: no names.
    ax
        Draw into these axes (default: a new figure).
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).
    cmap
        Colour map of a numeric ``color``.
    point_size
        Marker size (default scales with the number of cells).
    key
        Former name of ``color`` (kept for existing calls).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    _plt()
    import matplotlib.patheffects as pe

    color = key if key is not None else color
    if color not in adata.obs:
        raise VelopyroInputError(f"obs[{color!r}] not found; run model.write_to_adata() first "
                                 "(it writes obs['latent_time'])")
    if groups is not None and groups not in adata.obs:
        if groups != "clusters":
            raise VelopyroInputError(f"groups={groups!r} is not a column of adata.obs; pass a cell-type column "
                                     "or groups=None")
        groups = None
    emb = _embedding(adata, basis)
    size = point_size if point_size is not None else max(2.0, min(30.0, 12000.0 / adata.n_obs))
    fig, ax = _axes(ax, (6.2, 5.0))
    col = adata.obs[color]
    if col.dtype.kind in "biuf" and not hasattr(col, "cat"):
        t = np.asarray(col, dtype=np.float64)
        order = np.argsort(np.nan_to_num(t), kind="stable")
        sc = ax.scatter(emb[order, 0], emb[order, 1], c=t[order], cmap=cmap, s=size, linewidths=0,
                        rasterized=True)
        fig.colorbar(sc, ax=ax, label=color.replace("_", " "))
    else:
        col = col.astype("category")
        cats = list(col.cat.categories)
        colors = _categorical_colors(adata, color, cats)
        codes = np.asarray(col.cat.codes)
        for i, cat in enumerate(cats):
            m = codes == i
            ax.scatter(emb[m, 0], emb[m, 1], color=colors[i], s=size, linewidths=0, label=str(cat), rasterized=True)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2.5, fontsize=8)
    if groups is not None:
        lab = adata.obs[groups].astype("category")
        codes = np.asarray(lab.cat.codes)
        for i, cat in enumerate(lab.cat.categories):
            m = codes == i
            if m.any():
                x, y = np.median(emb[m], axis=0)
                ax.text(x, y, str(cat), ha="center", va="center", fontsize=8, fontweight="bold",
                        path_effects=[pe.withStroke(linewidth=2.5, foreground="white")])
    _label_embedding(ax, basis)
    ax.set_title("velopyro latent time" if color == "latent_time" else color.replace("_", " "))
    if fig.axes[0] is ax and len(fig.axes) <= 2:
        fig.tight_layout()
    return _done(fig, save, show)


def _velocity_grid(emb: np.ndarray, v: np.ndarray, n_grid: int, smooth: float,
                   min_density: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-kernel average of embedding velocities on a regular grid; NaN where no cells are near."""
    from scipy.spatial import cKDTree

    lo, hi = emb.min(0), emb.max(0)
    pad = 0.02 * (hi - lo)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n_grid)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n_grid)
    xx, yy = np.meshgrid(gx, gy)
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    spacing = float(np.mean([gx[1] - gx[0], gy[1] - gy[0]]))
    sigma = smooth * spacing
    k = int(min(len(emb), max(10, len(emb) // 50)))
    dist, idx = cKDTree(emb).query(pts, k=k)
    dist, idx = dist.reshape(len(pts), -1), idx.reshape(len(pts), -1)
    w = np.exp(-0.5 * (dist / sigma) ** 2)
    mass = w.sum(1)
    vg = (v[idx] * w[..., None]).sum(1) / np.maximum(mass, 1e-12)[:, None]
    empty = (mass < min_density) | (dist[:, 0] > 2.0 * spacing)
    vg[empty] = np.nan
    return gx, gy, vg[:, 0].reshape(xx.shape), vg[:, 1].reshape(xx.shape)


def velocity_stream(
    adata: Any,
    basis: str = "umap",
    color: str | None = "clusters",
    save: str | os.PathLike | None = None,
    *,
    vkey: str = "velocity",
    n_grid: int = 50,
    smooth: float = 1.0,
    density: float = 1.5,
    min_density: float = 0.3,
    point_size: float | None = None,
    legend: bool = True,
    ax: Any | None = None,
    show: bool | None = None,
) -> Any:
    """Velocity streamlines on an embedding, over the cells coloured by a cluster (or numeric) key.

    The embedding velocity ``obsm[f"{vkey}_{basis}"]`` (computed with
    :func:`velopyro.tl.velocity_embedding` and stored in ``adata`` if missing) is averaged on an
    ``n_grid x n_grid`` grid with a Gaussian kernel (width ``smooth`` grid spacings) and drawn with
    ``matplotlib.pyplot.streamplot``; grid points without cells nearby are left empty.

    Parameters
    ----------
    adata
        AnnData with ``obsm[f"X_{basis}"]`` and ``layers[vkey]`` (or ``obsm[f"{vkey}_{basis}"]``).
    basis
        Embedding name.
    color
        ``obs`` column for the cells' colours (categorical: legend; numeric: colour bar); None: grey.
    save
        Write the figure to this path.
    vkey
        Velocity layer.
    n_grid
        Grid points per axis.
    smooth
        Kernel width in grid spacings.
    density
        Streamline density (``streamplot``'s ``density``).
    min_density
        Grid points whose kernel mass (in cells) is below this are not drawn.
    point_size
        Marker size of the cells (default scales with the number of cells).
    legend
        Show the legend of a categorical ``color``.
    ax
        Draw into these axes (default: a new figure).
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    emb = _embedding(adata, basis)
    if color is not None and color not in adata.obs:
        raise VelopyroInputError(f"color={color!r} is not a column of adata.obs")
    vk = f"{vkey}_{basis}"
    if vk not in adata.obsm:
        from ..tl import velocity_embedding

        velocity_embedding(adata, basis=basis, vkey=vkey)
    v = np.nan_to_num(np.asarray(adata.obsm[vk], dtype=np.float64)[:, :2])
    gx, gy, vx, vy = _velocity_grid(emb, v, n_grid, smooth, min_density)

    size = point_size if point_size is not None else max(2.0, min(30.0, 12000.0 / adata.n_obs))
    new = ax is None
    fig, ax = _axes(ax, (7.6 if color is not None and legend else 6.2, 5.6))
    if color is None:
        ax.scatter(emb[:, 0], emb[:, 1], c="lightgrey", s=size, linewidths=0, rasterized=True)
    else:
        col = adata.obs[color]
        if col.dtype.kind in "biuf" and not hasattr(col, "cat"):
            sc = ax.scatter(emb[:, 0], emb[:, 1], c=np.asarray(col, dtype=float), cmap="viridis", s=size,
                            linewidths=0, alpha=0.7, rasterized=True)
            fig.colorbar(sc, ax=ax, label=color)
        else:
            col = col.astype("category")
            cats = list(col.cat.categories)
            colors = _categorical_colors(adata, color, cats)
            codes = np.asarray(col.cat.codes)
            for i, cat in enumerate(cats):
                m = codes == i
                ax.scatter(emb[m, 0], emb[m, 1], color=colors[i], s=size, linewidths=0, alpha=0.6,
                           label=str(cat), rasterized=True)
            if legend:
                ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2.5,
                          fontsize=9, title=color)
    speed = np.sqrt(vx ** 2 + vy ** 2)
    if np.isfinite(speed).any() and np.nanmax(speed) > 0:
        lw = 0.5 + 1.5 * np.nan_to_num(speed / np.nanmax(speed))
        ax.streamplot(gx, gy, vx, vy, color="black", linewidth=lw, density=density, arrowsize=1.2,
                      arrowstyle="-|>", zorder=3)
    _label_embedding(ax, basis)
    ax.set_title(f"velopyro velocity ({basis})")
    if new:
        fig.tight_layout()
    return _done(fig, save, show)


def _history(obj: Any) -> dict[str, Any]:
    hist = getattr(obj, "history", None)
    if isinstance(hist, dict) and hist:
        return hist
    uns = getattr(obj, "uns", None)
    if uns is not None and "history" in uns.get("velopyro", {}):
        return dict(uns["velopyro"]["history"])
    if isinstance(obj, dict) and "train_loss" in obj:
        return obj
    raise VelopyroInputError(
        "no training history found: pass a fitted VeloPyro model or an AnnData after "
        "model.write_to_adata() (uns['velopyro']['history'])"
    )


def loss_curve(
    adata_or_model: Any,
    save: str | os.PathLike | None = None,
    *,
    log_y: bool = False,
    ax: Any | None = None,
    show: bool | None = None,
) -> Any:
    """Training and validation loss (negative ELBO per cell) per epoch.

    Parameters
    ----------
    adata_or_model
        A fitted :class:`velopyro.VeloPyro` (its ``history``), an AnnData with
        ``uns["velopyro"]["history"]``, or a history dict.
    save
        Write the figure to this path.
    log_y
        Symmetric-log y axis (useful when the first epochs dominate).
    ax
        Draw into these axes (default: a new figure).
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the best epoch (lowest validation loss, the parameters kept) is marked.
    """
    hist = _history(adata_or_model)
    train = np.asarray(hist["train_loss"], dtype=np.float64)
    val = np.asarray(hist.get("validation_loss", []), dtype=np.float64)
    epoch = np.asarray(hist.get("epoch", np.arange(1, len(train) + 1)), dtype=np.float64)
    if train.size == 0:
        raise VelopyroInputError("the training history is empty; fit the model first")
    new = ax is None
    fig, ax = _axes(ax, (6.0, 4.2))
    ax.plot(epoch, train, label="train", color="#3182bd", lw=1.5)
    if val.size == train.size and np.isfinite(val).any():
        ax.plot(epoch, val, label="validation", color="#e6550d", lw=1.5)
        best = int(hist["best_epoch"]) if hist.get("best_epoch") else int(epoch[np.nanargmin(val)])
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative ELBO per cell)")
    if log_y:
        ax.set_yscale("symlog")
    else:  # keep the first epochs from flattening the rest
        both = np.concatenate([train, val[np.isfinite(val)]]) if val.size else train
        tail = both[np.isfinite(both)]
        skip = max(1, len(train) // 20)
        late = np.concatenate([train[skip:], val[skip:]]) if val.size == train.size else train[skip:]
        late = late[np.isfinite(late)]
        if late.size and tail.size:
            lo, hi = float(tail.min()), float(late.max())
            pad = 0.05 * (hi - lo if hi > lo else abs(hi) + 1.0)
            ax.set_ylim(lo - pad, hi + pad)
    converged = hist.get("converged")  # absent in histories from before it was recorded
    if converged is not None and not bool(converged):
        # the fit ended at max_epochs with the validation loss still improving: say so on the figure
        ax.set_title(f"velopyro training: not converged (stopped at max_epochs = {int(epoch[-1])} "
                     "before early stopping)", color="#b30000", fontsize=10)
    else:
        ax.set_title("velopyro training")
    ax.legend(frameon=False)
    if new:
        fig.tight_layout()
    return _done(fig, save, show)
