"""Posterior predictive check figures: densities/ECDFs, PIT histograms, rootograms.

All three take a fitted :class:`~velopyro.api.VeloPyro` and compute what they draw with
:mod:`velopyro.ppc` (batched over cells; replicates are binned on the fly, never stored), or take
precomputed numbers (``pit_histogram`` accepts a PIT array). matplotlib is imported when a figure is
drawn, so ``import velopyro`` does not need it. Each returns the ``matplotlib.figure.Figure`` and
writes it to ``save`` when given.

Which check for which likelihood: for the Normal likelihood on Ms/Mu compare densities or ECDFs of the
observations and of replicates (``ppc_density``); for counts use a rootogram (``rootogram``) and the
randomised PIT (``pit_histogram``), which is uniform under a calibrated model whatever the likelihood.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import ppc
from ..fitted import FittedLike, FittedModel, as_fitted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ppc_density", "pit_histogram", "rootogram"]

_OBS = "black"
_REP = "tab:blue"
_EXP = "tab:red"


def _grid(n_panels: int, ncols: int, panel_size: tuple[float, float], ax: Any = None) -> tuple[Figure, np.ndarray]:
    if ax is not None:  # the caller's axes: one Axes per panel
        from ._figures import _panels

        fig, axes, _ = _panels(ax, n_panels, ncols, panel_size)
        return fig, np.asarray(axes, dtype=object)
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                             squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _finish(fig: Figure, save: str | os.PathLike | None, show: bool | None = None, own: bool = True) -> Figure:
    if own:
        fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def _default_genes(model: FittedModel, genes: Sequence[Any] | np.ndarray | None, max_genes: int) -> np.ndarray:
    """The first ``max_genes`` genes by variance of the spliced observations, unless given."""
    if genes is not None:
        return ppc.resolve_genes(model, genes)
    var = model.data.s.numpy().var(0)
    return np.sort(np.argsort(-var)[:max_genes])


def _gene_name(model: FittedModel, g: int) -> str:
    return str(model.var_names[g])


def ppc_density(
    model: FittedLike,
    genes: Sequence[Any] | np.ndarray | None = None,
    modality: str = "s",
    kind: str = "density",
    n_samples: int = 20,
    n_bins: int = 50,
    max_genes: int = 8,
    pooled: bool = True,
    indices: np.ndarray | Sequence[int] | None = None,
    seed: int | None = 0,
    ncols: int = 3,
    save: str | os.PathLike | None = None,
    ax: Any | None = None,
    show: bool | None = None,
) -> Figure:
    """Observed vs replicated distributions (density or ECDF), pooled over genes and per gene.

    Each replicate (a draw of the posterior predictive, :func:`velopyro.ppc.histograms`) is a thin blue
    line and the observations are black; for a well-specified model the black line lies within the
    blue ones.

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro`.
    genes
        Genes with their own panel (names, positions or mask); default: the ``max_genes`` most variable.
    modality
        ``"s"`` (spliced) or ``"u"`` (unspliced).
    kind
        ``"density"`` (histogram densities) or ``"ecdf"``.
    n_samples
        Replicates drawn.
    n_bins
        Bins for continuous data (count likelihoods use integer bins).
    max_genes
        Genes shown by default.
    pooled
        Add a first panel pooling all of the model's genes and the cells.
    indices
        Cells; all by default.
    seed
        Seed of the draws.
    ncols
        Panels per row.
    save
        File to write the figure to.
    ax
        Draw into these axes, one per panel (the pooled panel first; a single Axes for one panel);
        default a new figure.
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    if kind not in ("density", "ecdf"):
        raise ValueError(f"kind must be 'density' or 'ecdf', got {kind!r}.")
    model = as_fitted(model)
    gpos = _default_genes(model, genes, max_genes)
    idx = ppc.resolve_indices(model, indices)
    obs = (model.data.u if modality == "u" else model.data.s).numpy()[idx]
    edges = ppc.default_edges(obs, model.likelihood.is_count, n_bins=n_bins)
    h = ppc.histograms(model, edges, n_samples=n_samples, modality=modality, genes=gpos, indices=idx, seed=seed)
    panels = ([("all genes (pooled)", h["pooled_observed"], h["pooled_replicated"])] if pooled else [])
    panels += [(_gene_name(model, g), h["observed"][j], h["replicated"][:, j]) for j, g in enumerate(gpos)]
    fig, axes = _grid(len(panels), ncols, (3.4, 2.6), ax)
    e = h["edges"]
    centres = 0.5 * (e[:-1] + e[1:])
    widths = np.diff(e)
    label = {"u": "unspliced", "s": "spliced"}[modality]
    x = e[1:] if kind == "ecdf" else centres  # an ECDF is known at the right edge of each bin

    def curve(c: np.ndarray) -> np.ndarray:
        tot = max(c.sum(), 1.0)
        return np.cumsum(c) / tot if kind == "ecdf" else c / tot / widths

    for pan, (title, o, r) in zip(axes, panels, strict=False):
        for i, c in enumerate(r):
            pan.plot(x, curve(c), color=_REP, lw=0.6, alpha=0.35, label="replicated" if i == 0 else None)
        pan.plot(x, curve(o), color=_OBS, lw=1.6, label="observed", zorder=3)
        pan.set_title(title, fontsize=9)
        pan.set_xlabel(f"{label} ({'counts' if model.likelihood.is_count else 'Ms/Mu'})", fontsize=8)
        pan.set_ylabel("ECDF" if kind == "ecdf" else "density", fontsize=8)
        pan.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, frameon=False)
    if ax is None:
        fig.suptitle(f"Posterior predictive check ({model.config['likelihood']} likelihood, {n_samples} replicates)",
                     fontsize=10)
    return _finish(fig, save, show, own=ax is None)


def pit_histogram(
    model_or_pit: FittedLike | np.ndarray,
    n_samples: int = 100,
    modality: str = "s",
    genes: Sequence[Any] | np.ndarray | None = None,
    n_bins: int = 20,
    max_genes: int = 5,
    seed: int | None = 0,
    randomized: bool = True,
    ncols: int = 3,
    save: str | os.PathLike | None = None,
    gene_names: Sequence[Any] | None = None,
    ax: Any | None = None,
    show: bool | None = None,
) -> Figure:
    """Histogram of PIT values, pooled and per gene, with the uniform reference and its 99% band.

    Under a calibrated posterior predictive the PIT is Uniform(0, 1) (randomised for counts); a U shape
    means the data are more dispersed than the replicates, a hump that they are less dispersed, a slope
    a shifted mean. The title gives the Kolmogorov-Smirnov distance from uniform.

    Parameters
    ----------
    model_or_pit
        A fitted :class:`~velopyro.api.VeloPyro` (the PIT is computed with :func:`velopyro.ppc.pit`) or a
        precomputed ``(cells, genes)`` PIT array.
    n_samples
        Replicates per observation when computing the PIT.
    modality
        ``"s"`` or ``"u"`` when computing the PIT.
    genes
        Genes with their own panel (positions, or names when a model is given); by default the
        ``max_genes`` genes with the largest KS distance.
    n_bins
        Histogram bins.
    max_genes
        Per-gene panels by default (0 for the pooled panel only).
    seed
        Seed of the PIT's replicates and randomisation.
    randomized
        Randomised PIT (see :func:`velopyro.ppc.pit`).
    ncols
        Panels per row.
    save
        File to write the figure to.
    gene_names
        Names of a precomputed PIT array's columns for the panel titles (e.g. ``adata.var_names``);
        positions are shown without them. A model supplies its own.
    ax
        Draw into these axes, one per panel (the pooled panel first; a single Axes for one panel);
        default a new figure.
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    if isinstance(model_or_pit, np.ndarray):
        values = np.asarray(model_or_pit, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        names = [str(j) for j in range(values.shape[1])] if gene_names is None else [str(g) for g in gene_names]
        if len(names) != values.shape[1]:
            raise ValueError(f"gene_names has {len(names)} names but the PIT array has {values.shape[1]} genes "
                             "(columns); pass the names of the genes the PIT was computed on.")
        gpos = np.arange(values.shape[1]) if genes is None else np.asarray(genes, dtype=int)
        explicit = genes is not None
    else:
        model = as_fitted(model_or_pit)
        values = ppc.pit(model, n_samples=n_samples, seed=seed, randomized=randomized, modality=modality)
        names = [str(v) for v in model.var_names]
        explicit = genes is not None
        gpos = ppc.resolve_genes(model, genes) if explicit else np.arange(values.shape[1])
    if not explicit:
        ks = ppc.ks_per_gene(values)
        gpos = np.argsort(-ks)[:max_genes] if max_genes > 0 else np.arange(0)
    panels = [("all genes (pooled)", values.ravel())] + [(names[g], values[:, g]) for g in gpos]
    fig, axes = _grid(len(panels), ncols, (3.2, 2.5), ax)
    from scipy import stats

    for pan, (title, x) in zip(axes, panels, strict=False):
        x = x[np.isfinite(x)]
        n = len(x)
        pan.hist(x, bins=n_bins, range=(0, 1), density=True, color=_REP, alpha=0.7, edgecolor="white", lw=0.4)
        p = 1.0 / n_bins
        lo, hi = stats.binom.ppf([0.005, 0.995], n, p) / (n * p) if n else (1.0, 1.0)
        pan.axhspan(lo, hi, color="grey", alpha=0.2, lw=0)
        pan.axhline(1.0, color=_OBS, lw=1)
        pan.set_xlim(0, 1)
        pan.set_title(f"{title}\nKS = {ppc.ks_uniform(x):.3f}", fontsize=9)
        pan.set_xlabel("PIT", fontsize=8)
        pan.tick_params(labelsize=7)
    if ax is None:
        fig.suptitle("PIT of the posterior predictive (grey: 99% band under uniformity)", fontsize=10)
    return _finish(fig, save, show, own=ax is None)


def rootogram(
    model: FittedLike,
    genes: Sequence[Any] | np.ndarray | None = None,
    modality: str = "s",
    n_samples: int = 50,
    max_count: int | None = None,
    max_genes: int = 5,
    pooled: bool = True,
    indices: np.ndarray | Sequence[int] | None = None,
    seed: int | None = 0,
    ncols: int = 3,
    save: str | os.PathLike | None = None,
    ax: Any | None = None,
    show: bool | None = None,
) -> Figure:
    """Hanging rootograms of counts: observed frequencies hanging from the posterior predictive's.

    For each count value ``c`` the curve is ``sqrt(expected number of cells with count c)`` (averaged
    over replicates) and the bar of ``sqrt(observed number)`` hangs from it; bars that end above zero
    mark counts the model over-predicts, below zero under-predicts (Kleiber & Zeileis 2016).

    Parameters
    ----------
    model
        A fitted :class:`~velopyro.api.VeloPyro`, normally with a count likelihood.
    genes
        Genes with their own panel; default: the ``max_genes`` most variable.
    modality
        ``"s"`` or ``"u"``.
    n_samples
        Replicates averaged for the expected frequencies.
    max_count
        Largest count shown (the last bin also holds larger counts); default: the 99.5th percentile.
    max_genes
        Genes shown by default.
    pooled
        Add a first panel over all genes and cells.
    indices
        Cells; all by default.
    seed
        Seed of the replicates.
    ncols
        Panels per row.
    save
        File to write the figure to.
    ax
        Draw into these axes, one per panel (the pooled panel first; a single Axes for one panel);
        default a new figure.
    show
        Call ``matplotlib.pyplot.show()`` after drawing (default: no).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    model = as_fitted(model)
    gpos = _default_genes(model, genes, max_genes)
    idx = ppc.resolve_indices(model, indices)
    obs = (model.data.u if modality == "u" else model.data.s).numpy()[idx]
    edges = (np.arange(-0.5, max_count + 1.0, 1.0) if max_count is not None
             else ppc.default_edges(obs, is_count=True))
    h = ppc.histograms(model, edges, n_samples=n_samples, modality=modality, genes=gpos, indices=idx, seed=seed)
    panels = ([("all genes (pooled)", h["pooled_observed"], h["pooled_replicated"].mean(0))] if pooled else [])
    panels += [(_gene_name(model, g), h["observed"][j], h["replicated"][:, j].mean(0)) for j, g in enumerate(gpos)]
    fig, axes = _grid(len(panels), ncols, (3.4, 2.6), ax)
    counts = 0.5 * (h["edges"][:-1] + h["edges"][1:])
    for pan, (title, o, e) in zip(axes, panels, strict=False):
        top = np.sqrt(e)
        pan.bar(counts, np.sqrt(o), bottom=top - np.sqrt(o), width=0.8, color="lightgrey", edgecolor="grey", lw=0.4)
        pan.plot(counts, top, color=_EXP, lw=1.2, marker="o", ms=2)
        pan.axhline(0, color=_OBS, lw=0.8)
        pan.set_title(title, fontsize=9)
        pan.set_xlabel(f"{'unspliced' if modality == 'u' else 'spliced'} count (last bin: >=)", fontsize=8)
        pan.set_ylabel("sqrt(frequency)", fontsize=8)
        pan.tick_params(labelsize=7)
    if ax is None:
        fig.suptitle(f"Hanging rootogram ({model.config['likelihood']} likelihood; red: expected)", fontsize=10)
    return _finish(fig, save, show, own=ax is None)
