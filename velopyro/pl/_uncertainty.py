"""Figures of veloVI's uncertainty read-outs: per-cell uncertainty on an embedding, permutation scores,
per-gene velocity with its posterior interval along the latent time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validation import VelopyroInputError
from ._figures import _axes, _categorical_colors, _done, _embedding, _gene_indices, _label_embedding, _panels

__all__ = ["uncertainty", "permutation_scores", "velocity_interval"]


def uncertainty(
    adata: Any,
    basis: str = "umap",
    color: str = "directional_cosine_sim_variance",
    *,
    ax: Any | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    cmap: str = "viridis",
    point_size: float | None = None,
) -> Any:
    """Cells on an embedding coloured by a per-cell uncertainty (scanpy-style).

    Parameters
    ----------
    adata
        AnnData with ``obs[color]`` (from :meth:`velopyro.VeloPyro.get_directional_uncertainty`) and
        ``obsm[f"X_{basis}"]``.
    basis
        Embedding (``"umap"`` reads ``obsm["X_umap"]``).
    color
        ``obs`` column to show (default veloVI's ``directional_cosine_sim_variance``).
    ax
        Draw into these axes (default: a new figure).
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).
    save
        Write the figure to this path.
    cmap
        Colour map.
    point_size
        Marker size (default scales with the number of cells).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes.
    """
    if color not in adata.obs:
        raise VelopyroInputError(f"obs[{color!r}] not found; run model.get_directional_uncertainty() first")
    emb = _embedding(adata, basis)
    val = np.asarray(adata.obs[color], dtype=np.float64)
    fig, ax = _axes(ax, (6.2, 5.0))
    size = point_size if point_size is not None else max(2.0, min(30.0, 12000.0 / adata.n_obs))
    order = np.argsort(np.nan_to_num(val), kind="stable")  # the most uncertain on top
    sc = ax.scatter(emb[order, 0], emb[order, 1], c=val[order], cmap=cmap, s=size, linewidths=0,
                    rasterized=True)
    fig.colorbar(sc, ax=ax, label=color.replace("_", " "))
    _label_embedding(ax, basis)
    ax.set_title(color.replace("_", " "))
    return _done(fig, save, show)


def permutation_scores(
    adata: Any,
    color: Any | None = None,
    *,
    ax: Any | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Any:
    """Box plot of the permutation scores over genes, one box per cell type (veloVI's figure).

    Parameters
    ----------
    adata
        AnnData with ``varm["permutation_scores"]`` and ``uns["permutation_scores"]`` (from
        :meth:`velopyro.VeloPyro.get_permutation_scores`).
    color
        One matplotlib colour for every box, or one per cell type; default the cell types' colours
        (``uns[f"{labels_key}_colors"]``, else tab10).
    ax
        Draw into these axes (default: a new figure).
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes.
    """
    if "permutation_scores" not in adata.varm or "permutation_scores" not in adata.uns:
        raise VelopyroInputError("varm['permutation_scores'] not found; run "
                                 "model.get_permutation_scores(labels_key=...) first")
    info = adata.uns["permutation_scores"]
    types = [str(c) for c in info["cell_types"]]
    scores = np.asarray(adata.varm["permutation_scores"], dtype=np.float64)
    data = [col[np.isfinite(col)] for col in scores.T]
    if color is None:
        colors = _categorical_colors(adata, str(info["labels_key"]), types)
    elif isinstance(color, str | tuple):
        colors = [color] * len(types)
    else:
        colors = list(color)
        if len(colors) != len(types):
            raise VelopyroInputError(f"color has {len(colors)} entries for {len(types)} cell types; pass one per type")
    fig, ax = _axes(ax, (max(4.0, 0.7 * len(types) + 2), 4.0))
    box = ax.boxplot(data, patch_artist=True, showfliers=False)
    for patch, c in zip(box["boxes"], colors, strict=True):
        patch.set_facecolor(c)
    ax.set_xticks(np.arange(1, len(types) + 1), types, rotation=45, ha="right")
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_ylabel("permutation score (t-statistic)")
    ax.set_title("kinetics vs permuted cells, per cell type")
    return _done(fig, save, show)


def velocity_interval(
    adata: Any,
    genes: str | Sequence[str] | None = None,
    n_genes: int = 4,
    *,
    color: str | None = "clusters",
    time_key: str = "latent_time",
    vkey: str = "velocity",
    ncols: int = 2,
    ax: Any | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    point_size: float | None = None,
) -> Any:
    """Per-gene velocity along the latent time with its posterior interval (one panel per gene).

    Cells are ordered by ``obs[time_key]``; each panel draws the posterior interval
    (``layers[f"{vkey}_lower"]`` to ``layers[f"{vkey}_upper"]``, from
    :meth:`velopyro.VeloPyro.get_velocity_interval`) as a grey band over the cells in that order, and
    each cell's posterior mean velocity (``layers[vkey]``) as a point coloured by ``obs[color]``.

    Parameters
    ----------
    adata
        AnnData after :meth:`velopyro.VeloPyro.write_to_adata` and
        :meth:`velopyro.VeloPyro.get_velocity_interval`.
    genes
        Gene name(s); default the ``n_genes`` best-fitted genes (:func:`velopyro.tl.gene_fit_r2`).
    n_genes
        Number of genes when ``genes`` is None.
    color
        ``obs`` column for the cells' colours (categorical: the clusters' colours and a legend; numeric:
        viridis); None: black.
    time_key
        ``obs`` column of the cells' time (x axis).
    vkey
        Velocity layer (``"velocity"``; ``"velocity_u"`` after ``get_velocity_interval(mode="unspliced")``).
    ncols
        Panels per row.
    ax
        Draw into these axes: one Axes per gene (a single Axes for one gene); default a new figure.
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).
    save
        Write the figure to this path.
    point_size
        Marker size (default scales with the number of cells).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; each panel is titled with the gene's name and the share of cells whose interval
        excludes 0 (the cells where the sign of the velocity is certain at that level).
    """
    lo_key, hi_key = f"{vkey}_lower", f"{vkey}_upper"
    for k in (vkey, lo_key, hi_key):
        if k not in adata.layers:
            raise VelopyroInputError(f"layers[{k!r}] not found; run model.write_to_adata() and "
                                     "model.get_velocity_interval() first")
    if time_key not in adata.obs:
        raise VelopyroInputError(f"obs[{time_key!r}] not found; run model.write_to_adata() first")
    if color is not None and color not in adata.obs:
        raise VelopyroInputError(f"color={color!r} is not a column of adata.obs; pass one or color=None")
    idx = _gene_indices(adata, genes, n_genes)
    info = adata.uns.get("velocity_interval", {})
    level = info.get("level")
    t = np.asarray(adata.obs[time_key], dtype=np.float64)
    order = np.argsort(t, kind="stable")
    size = point_size if point_size is not None else max(1.0, min(20.0, 6000.0 / adata.n_obs))
    cells = None
    if color is not None:
        col = adata.obs[color]
        if col.dtype.kind in "biuf" and not hasattr(col, "cat"):
            cells = ("numeric", np.asarray(col, dtype=np.float64)[order], None)
        else:
            col = col.astype("category")
            cats = list(col.cat.categories)
            pal = np.asarray(_categorical_colors(adata, color, cats), dtype=object)
            cells = ("categorical", list(pal[np.asarray(col.cat.codes)[order]]), (cats, pal))

    def dense(key: str) -> np.ndarray:
        x = adata.layers[key][:, idx]
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)[order]

    v, lo, hi = dense(vkey), dense(lo_key), dense(hi_key)
    fig, axes, new = _panels(ax, len(idx), ncols, (4.2, 3.0))
    names = np.asarray(adata.var_names)[idx]
    band = f"{level:.0%} interval" if level is not None else "interval"
    for k, a in enumerate(axes):
        a.fill_between(t[order], lo[:, k], hi[:, k], color="0.75", lw=0, step="mid", label=band)
        if cells is None:
            a.scatter(t[order], v[:, k], s=size, color="black", linewidths=0, label="posterior mean")
        elif cells[0] == "numeric":
            a.scatter(t[order], v[:, k], s=size, c=cells[1], cmap="viridis", linewidths=0, label="posterior mean")
        else:
            a.scatter(t[order], v[:, k], s=size, c=cells[1], linewidths=0, label="posterior mean")
        a.axhline(0.0, color="0.3", lw=0.7, ls="--")
        certain = float(np.mean((lo[:, k] > 0) | (hi[:, k] < 0)))
        a.set_title(f"{names[k]}  (sign certain in {certain:.0%})", fontsize=10)
        a.set_xlabel(time_key.replace("_", " "))
        a.set_ylabel(f"{vkey.replace('_', ' ')} ({'du/dt' if vkey == 'velocity_u' else 'ds/dt'})")
        a.tick_params(labelsize=8)
    if cells is not None and cells[0] == "categorical":
        from matplotlib.lines import Line2D

        cats, pal = cells[2]
        handles = [Line2D([], [], marker="o", ls="", color=pal[i], label=str(c)) for i, c in enumerate(cats)]
        handles.append(Line2D([], [], color="0.75", lw=6, label=band))
        if new:
            fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        else:
            axes[-1].legend(handles=handles, frameon=False, fontsize=7)
    if new:
        fig.tight_layout()
    return _done(fig, save, show)
