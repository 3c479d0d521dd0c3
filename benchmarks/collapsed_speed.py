"""Seconds per epoch on pancreas: pi's guide (dirichlet, collapsed, logistic_normal) and count likelihoods.

    python -m benchmarks.collapsed_speed    # writes benchmarks/results/collapsed_speed/results.{json,md}

Data: ``velopyro.datasets.pancreas()`` preprocessed by ``velopyro.pp.preprocess`` (cached under /tmp). Every
variant fits the same genes with ``fit(max_epochs=1 + epochs, early_stopping=False)``, batch 256, seed 0,
two torch threads; the first epoch is a warm-up and is dropped. Variants run in ``rounds`` interleaved
rounds so that a change of machine load hits all of them alike; the table gives the median epoch over
all rounds.

- ``normal`` with ``pi_guide`` ``dirichlet`` / ``collapsed`` / ``logistic_normal`` (independent coupling,
  the default) and ``collapsed`` with shared coupling;
- ``poisson`` and ``negative_binomial`` (Dirichlet guide) on the raw counts of the same genes, with
  velopyro's count log-densities (data-only terms once per minibatch) and, as ``before``, with torch's
  ``Poisson`` / ``NegativeBinomial`` swapped back in.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, set_threads

CACHE = Path("/tmp/velopyro_speed_pancreas_pp.h5ad")
OUT = RESULTS_DIR / "collapsed_speed"

#: name -> (likelihood, pi_guide, state_coupling, torch's count densities)
VARIANTS = {
    "normal/dirichlet": ("normal", "dirichlet", "independent", False),
    "normal/collapsed": ("normal", "collapsed", "independent", False),
    "normal/logistic_normal": ("normal", "logistic_normal", "independent", False),
    "normal/collapsed/shared": ("normal", "collapsed", "shared", False),
    "poisson/dirichlet": ("poisson", "dirichlet", "independent", False),
    "poisson/dirichlet (torch log_prob, before)": ("poisson", "dirichlet", "independent", True),
    "negative_binomial/dirichlet": ("negative_binomial", "dirichlet", "independent", False),
    "negative_binomial/dirichlet (torch log_prob, before)": ("negative_binomial", "dirichlet", "independent", True),
}


def _data():
    import anndata as ad

    import velopyro

    if CACHE.exists():
        return ad.read_h5ad(CACHE)
    adata = velopyro.datasets.pancreas()
    velopyro.pp.preprocess(adata)
    adata.write_h5ad(CACHE)
    return adata


def _epoch_seconds(adata, likelihood: str, pi_guide: str, coupling: str, torch_counts: bool, epochs: int) -> list:
    import pyro.distributions as dist

    import velopyro
    from velopyro import distributions as vdist

    saved = (vdist.Poisson, vdist.NegativeBinomial)
    if torch_counts:
        vdist.Poisson, vdist.NegativeBinomial = dist.Poisson, dist.NegativeBinomial
    try:
        model = velopyro.VeloPyro(adata, likelihood=likelihood, pi_guide=pi_guide, state_coupling=coupling)
        model.fit(max_epochs=1 + epochs, early_stopping=False, progress_bar=False, seed=0)
    finally:
        vdist.Poisson, vdist.NegativeBinomial = saved
    return [float(x) for x in model.history["seconds"][1:]]


def main(argv: list[str] | None = None) -> None:
    """Run the variants and write ``results.json`` and ``results.md``.

    Parameters
    ----------
    argv
        Command-line arguments (``--epochs``, ``--rounds``).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per variant and round (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the variants")
    args = p.parse_args(argv)
    set_threads(2)
    import os
    import platform

    import numpy as np
    import torch

    adata = _data()
    seconds: dict[str, list[float]] = {k: [] for k in VARIANTS}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for name, spec in VARIANTS.items():
            seconds[name] += _epoch_seconds(adata, *spec, epochs=args.epochs)
            print(f"{name}: {np.median(seconds[name]):.3f} s/epoch", flush=True)
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    ref = med["normal/dirichlet"]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = dict(cells=int(adata.n_obs), genes=int(adata.n_vars), epochs=args.epochs, rounds=args.rounds,
                threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
                load_average_at_end=list(os.getloadavg()), total_seconds=time.perf_counter() - t0)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "epoch_seconds": seconds,
                                                  "median": med}, indent=1))
    lines = [
        "# Seconds per epoch on pancreas: pi's guide and count likelihoods",
        "",
        f"`python -m benchmarks.collapsed_speed --epochs {args.epochs} --rounds {args.rounds}`: "
        f"{meta['cells']} cells x {meta['genes']} genes (`velopyro.pp.preprocess`), batch 256, "
        f"{meta['threads']} threads, {args.epochs} timed epochs per variant and round after one warm-up "
        f"epoch, {args.rounds} interleaved rounds; median epoch (with its validation pass). Load average at "
        f"the end: {meta['load_average_at_end'][0]:.2f} (the machine is shared, so ratios are the figures "
        "to read).",
        "",
        "| variant | s/epoch (median) | vs normal/dirichlet | vs normal, same guide |",
        "|---|---|---|---|",
    ]
    for name in VARIANTS:
        same = med["normal/dirichlet"] if "/dirichlet" in name else float("nan")
        vs_normal = f"{med[name] / same:.2f}x" if not name.startswith("normal") else ""
        lines.append(f"| {name} | {med[name]:.3f} | {med[name] / ref:.2f}x | {vs_normal} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
