"""Is the collapsed guide's velocity gap in its read-out or in its fit? (issue 33, item 2)

    python -m benchmarks.collapsed_readout branching scvelo_noisy      # rows of benchmarks.suite, seeds 0 and 1

For each row and seed, fits the library default (``pi_guide="dirichlet"``) and ``pi_guide="collapsed"`` on the
suite's data (library defaults otherwise, 1 torch thread) and scores the spliced velocity's sign accuracy
(:func:`benchmarks.metrics.velocity_sign_accuracy`, against the simulator's truth) under each read-out of the
same fit: the ``"pi"`` weights (q(pi | z); for the collapsed fit the state head's pi(z)), the ``"posterior"``
weights p(k | u, s, z), and for the collapsed fit the exact mean E[pi | u, s, z] without the head. If the
collapsed fit is behind under every read-out, the gap is in the fit, not in how it is read. Appends one JSON
line per (row, seed) to ``benchmarks/results/collapsed_readout/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "collapsed_readout" / "results.jsonl"


def _sign(model, truth, weights: str) -> float:
    from benchmarks import metrics

    v = np.asarray(model.get_velocity(n_samples=25, statistic="mean", mode="spliced", state_weights=weights))
    return round(metrics.velocity_sign_accuracy(v, np.asarray(truth.velocity))["sign_accuracy"], 4)


def run_row(row: str, seed: int) -> dict:
    """Both guides' fits of one suite row at one seed, sign accuracy under each read-out."""
    from benchmarks import suite
    from velopyro import VeloPyro

    adata, truth = suite.dataset(row)
    out: dict = {"row": row, "seed": seed}
    for guide in ("collapsed", "dirichlet"):
        model = VeloPyro(adata.copy(), pi_guide=guide)
        model.fit(seed=seed, progress_bar=False)
        for w in ("pi", "posterior"):
            out[f"{guide}:{w}"] = _sign(model, truth, w)
        if guide == "collapsed":  # the exact mean E[pi | u, s, z], the head switched off
            model.guide.state_head.fitted.fill_(False)
            out["collapsed:exact_mean"] = _sign(model, truth, "pi")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: rows (simulated suite rows) and ``--seeds``."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for row in args.rows:
        for seed in args.seeds:
            line = json.dumps(run_row(row, seed))
            print(line, flush=True)
            with OUT.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
