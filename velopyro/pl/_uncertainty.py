"""Figures of veloVI's uncertainty read-outs: per-cell uncertainty on an embedding, permutation scores."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._validation import VelopyroInputError
from ._figures import _categorical_colors, _embedding, _finish, _label_embedding, _plt

__all__ = ["uncertainty", "permutation_scores"]


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _done(fig: Any, save: str | os.PathLike | None, show: bool | None) -> Any:
    _finish(fig, save)
    if show:
        _plt().show()
    return fig


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
