"""Per-gene evidence for the pancreas direction gap: which genes point the other way, and how they are fitted.

Reads the arrays that ``python -m benchmarks.direction run`` saved (``benchmarks/cache/direction``) for two
tool/variant pairs over their common seeds. For the transition ``Pre-endocrine -> Beta`` (or any other),
each gene's mean spliced velocity in the source cells is compared with the gene's displacement from the
source to the target cluster (mean Ms of target minus source): a gene "points forward" when the signs
agree. Genes with a clear displacement that one fit points backward in most seeds and the other forward
are listed with their fitted switch time, gamma / beta and state shares, and drawn as phase portraits with
both fits' trajectories (``benchmarks/results/direction/genes_<transition>.png``).

Usage::

    python -m benchmarks.direction_genes --a velopyro/default --b velovi/default
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import RESULTS_DIR
from benchmarks.direction import ARRAYS

OUT = RESULTS_DIR / "direction"


def _load(tool_variant: str, seed: int) -> dict | None:
    tool, variant = tool_variant.split("/")
    path = ARRAYS / f"pancreas_{tool}_{variant}_s{seed}.npz"
    return dict(np.load(path, allow_pickle=True)) if path.exists() else None


def _trajectory(rates: dict, g: int, t_max: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """The fitted trajectory of gene ``g`` through the run's kinetics: the registered kinetics with the most
    rates that the run's arrays hold (``rate_<name>``; velovi's runs hold the constant kinetics' rates)."""
    import torch

    from velopyro.kinetics import KINETICS

    kin = max((c for c in KINETICS.values() if all(f"rate_{k}" in rates for k in c.rate_names)),
              key=lambda c: len(c.rate_names))()
    t = torch.linspace(0, t_max, 400, dtype=torch.float64)
    r = {k: torch.tensor(float(rates[f"rate_{k}"][g]), dtype=torch.float64) for k in (*kin.rate_names, "t_s")}
    u, s = kin.trajectory(t, r)
    return u.numpy(), s.numpy()


def main(argv: list[str] | None = None) -> dict:
    """Per-gene sign agreement table and phase-portrait figure for one transition."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default="velopyro/default")
    p.add_argument("--b", default="velovi/default")
    p.add_argument("--source", default="Pre-endocrine")
    p.add_argument("--target", default="Beta")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--top", type=int, default=60, help="genes with the largest displacement considered")
    args = p.parse_args(argv)

    from benchmarks import data

    adata = data.pancreas()
    lab = adata.obs["clusters"].astype(str).to_numpy()
    src, tgt = lab == args.source, lab == args.target
    ms, mu = np.asarray(adata.layers["Ms"]), np.asarray(adata.layers["Mu"])
    delta = ms[tgt].mean(0) - ms[src].mean(0)
    names = np.asarray(adata.var_names)
    runs = {k: [r for s in args.seeds if (r := _load(k, s)) is not None] for k in (args.a, args.b)}
    n = min(len(v) for v in runs.values())
    if n == 0:
        raise SystemExit("no saved arrays for one of the fits; run benchmarks.direction first")
    forward = {}
    for k, rs in runs.items():
        forward[k] = np.stack([np.sign(r["velocity"][src].mean(0)) == np.sign(delta) for r in rs[:n]])
    weight = np.abs(delta)
    top = np.argsort(-weight)[: args.top]
    res: dict = {"transition": f"{args.source} -> {args.target}", "seeds": n, "fits": [args.a, args.b],
                 "weighted_forward_share": {k: float((weight[None] * f).sum(1).mean() / weight.sum())
                                            for k, f in forward.items()},
                 "top_genes_forward_share": {k: float(f[:, top].mean()) for k, f in forward.items()}}
    fa, fb = forward[args.a].mean(0), forward[args.b].mean(0)
    flip = [g for g in top if fa[g] < 0.5 <= fb[g]]
    rows = []
    for g in flip:
        row = {"gene": str(names[g]), "displacement": float(delta[g])}
        for k in (args.a, args.b):
            rs = runs[k][:n]
            row[k] = {
                "velocity_in_source": float(np.mean([r["velocity"][src, g].mean() for r in rs])),
                "t_s": float(np.mean([r["rate_t_s"][g] for r in rs])),
                "gamma_over_beta": float(np.mean([r["rate_gamma"][g] / r["rate_beta"][g] for r in rs])),
                "state_shares_in_source": np.mean([r["state_probs"][src, g].astype(np.float32).mean(0)
                                                   for r in rs], axis=0).round(3).tolist(),
            }
        rows.append(row)
    res["genes_backward_in_a_forward_in_b"] = rows
    res["rates_median"] = {k: {q: float(np.median(np.concatenate([r[f"rate_{q}"] for r in runs[k][:n]])))
                               for q in ("alpha", "beta", "gamma", "t_s")} for k in runs}
    OUT.mkdir(parents=True, exist_ok=True)
    tag = f"{args.source}_{args.target}".replace(" ", "_").replace("-", "")
    (OUT / f"genes_{tag}.json").write_text(json.dumps(res, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = flip[:12]
    if show:
        ncol = 4
        nrow = int(np.ceil(len(show) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
        other = ~(src | tgt)
        for ax, g in zip(axes.ravel(), show, strict=False):
            ax.scatter(ms[other, g], mu[other, g], s=2, c="#cccccc", rasterized=True)
            ax.scatter(ms[src, g], mu[src, g], s=3, c="#3182bd", label=args.source, rasterized=True)
            ax.scatter(ms[tgt, g], mu[tgt, g], s=3, c="#e6550d", label=args.target, rasterized=True)
            for k, col in ((args.a, "black"), (args.b, "#31a354")):
                u, s = _trajectory(runs[k][0], g)
                ax.plot(s, u, color=col, lw=1.2, label=f"{k} (seed {args.seeds[0]})")
            ax.set_title(f"{names[g]}", fontsize=9)
            ax.set_xlabel("Ms")
            ax.set_ylabel("Mu")
        for ax in axes.ravel()[len(show):]:
            ax.axis("off")
        axes.ravel()[0].legend(fontsize=6, frameon=False)
        fig.suptitle(f"genes pointing backward in {args.a}, forward in {args.b}: {args.source} -> {args.target}",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(OUT / f"genes_{tag}.png", dpi=110)
    print(json.dumps({k: v for k, v in res.items() if k != "genes_backward_in_a_forward_in_b"}, indent=1))
    for r in rows:
        print(r["gene"], round(r["displacement"], 3),
              {k: {q: (round(x, 3) if isinstance(x, float) else x) for q, x in r[k].items()} for k in (args.a, args.b)})
    return res


if __name__ == "__main__":
    main()
