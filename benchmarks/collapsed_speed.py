"""Seconds per epoch on pancreas: pi's guide (dirichlet, collapsed, logistic_normal) and count likelihoods.

    python -m benchmarks.collapsed_speed          # writes benchmarks/results/collapsed_speed/results.{json,md}
    python -m benchmarks.collapsed_speed --steps  # writes benchmarks/results/collapsed_speed/steps.{json,md}

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

``--steps`` times one training step instead (the enumerated ELBO's forward and backward pass on one
minibatch of 256 cells, ``n_cells`` = all cells), all variants interleaved step by step, and reports the
median wall and process CPU time per step: CPU time is the figure to read when other processes compete
for the cores, because it does not count the time a thread waits for a core.
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


def _step_times(adata, reps: int) -> dict[str, list[tuple[float, float]]]:
    """``(wall, cpu)`` seconds of ``reps`` training steps per variant, interleaved over the variants."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import TraceEnum_ELBO

    import velopyro
    from velopyro import distributions as vdist

    saved = (vdist.Poisson, vdist.NegativeBinomial)
    models = {name: velopyro.VeloPyro(adata, likelihood=lik, pi_guide=g, state_coupling=c)
              for name, (lik, g, c, _) in VARIANTS.items()}
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    for rep in range(reps + 1):
        idx = torch.randperm(adata.n_obs, generator=gen)[:256]
        for name, (_, _, _, torch_counts) in VARIANTS.items():
            m = models[name]
            args = m.data.batch(idx, torch.device("cpu"))
            if torch_counts:
                vdist.Poisson, vdist.NegativeBinomial = dist.Poisson, dist.NegativeBinomial
            try:
                pyro.set_rng_seed(rep)
                w0, c0 = time.perf_counter(), time.process_time()
                elbo.differentiable_loss(m.model, m.guide, *args, n_cells=adata.n_obs).backward()
                w1, c1 = time.perf_counter(), time.process_time()
            finally:
                vdist.Poisson, vdist.NegativeBinomial = saved
            if rep > 0:  # the first round warms up
                out[name].append((w1 - w0, c1 - c0))
    return out


def _steps_report(adata, reps: int) -> None:
    import os

    import numpy as np
    import torch

    times = _step_times(adata, reps)
    wall = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
    cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    load = os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "steps.json").write_text(json.dumps({"reps": reps, "threads": torch.get_num_threads(),
                                                "load_average_at_end": load, "seconds": times}, indent=1))
    lines = [
        "# One training step on pancreas: pi's guide and count likelihoods",
        "",
        f"`python -m benchmarks.collapsed_speed --steps --reps {reps}`: forward + backward of the enumerated "
        f"ELBO on one minibatch of 256 of {adata.n_obs} cells x {adata.n_vars} genes, {torch.get_num_threads()} "
        f"threads, variants interleaved step by step, median of {reps} steps after one warm-up round. "
        f"Load average at the end: {load:.2f}; process CPU time does not count waiting for a core.",
        "",
        "| variant | wall ms/step | CPU ms/step | CPU vs normal/dirichlet | CPU vs normal, same guide |",
        "|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        vs_normal = "" if name.startswith("normal") else f"{cpu[name] / cpu['normal/dirichlet']:.2f}x"
        lines.append(f"| {name} | {1e3 * wall[name]:.0f} | {1e3 * cpu[name]:.0f} | "
                     f"{cpu[name] / cpu['normal/dirichlet']:.2f}x | {vs_normal} |")
    (OUT / "steps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


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
    p.add_argument("--steps", action="store_true", help="time single training steps instead of epochs")
    p.add_argument("--reps", type=int, default=30, help="timed steps per variant with --steps")
    args = p.parse_args(argv)
    set_threads(2)
    if args.steps:
        _steps_report(_data(), args.reps)
        return
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
        vs_normal = "" if name.startswith("normal") else f"{med[name] / med['normal/dirichlet']:.2f}x"
        lines.append(f"| {name} | {med[name]:.3f} | {med[name] / ref:.2f}x | {vs_normal} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
