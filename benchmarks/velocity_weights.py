"""Which state weights give the better velocity on pancreas? One velopyro fit, scored both ways.

    python -m benchmarks.velocity_weights            # writes benchmarks/results/velocity_weights/results.{json,md}

velopyro's velocity is ``sum_k w_k dv_k`` averaged over posterior draws. ``w`` is either the enumerated
posterior of the state given the cell's data, ``p(k | u, s, z, pi)`` (``state_weights="posterior"``), or
the variational state probabilities ``pi`` themselves (``state_weights="pi"``, what veloVI reports). The
fit uses the pancreas data and settings of ``run_all`` (velopyro's own 90/10 split, seed 0); only the
velocity read-out differs between the rows. CBDir and ICVCoh come from ``metrics.direction_scores``, as in
``run_all``; latent time uses the same weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, set_threads


def main(argv: list[str] | None = None) -> dict:
    """Fit once, score the velocity with each state weighting, write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=500)
    parser.add_argument("--n-samples", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "velocity_weights")
    args = parser.parse_args(argv)
    set_threads()
    import velopyro
    from benchmarks import data, metrics

    adata = data.pancreas()
    t0 = time.perf_counter()
    model = velopyro.VeloPyro(adata, spliced_layer="Ms", unspliced_layer="Mu")
    model.fit(max_epochs=args.max_epochs, progress_bar=False, device="cpu", seed=0)
    res = {"fit_seconds": time.perf_counter() - t0, "epochs": len(model.history["epoch"]),
           "config": model.config, "weights": {}}
    s = np.asarray(adata.layers["Ms"])
    for w in ("posterior", "pi"):
        v = model.get_velocity(n_samples=args.n_samples, statistic="mean", state_weights=w)
        lt = model.get_latent_time(n_samples=args.n_samples, state_weights=w)
        d = metrics.direction_scores(adata, np.maximum(v, -s), lt, vkey=f"velocity_{w}")
        res["weights"][w] = {"cbdir": d["cbdir"], "icvcoh": d["icvcoh"]}
        print(w, "CBDir", round(d["cbdir"]["mean"], 3), "ICVCoh", round(d["icvcoh"]["mean"], 3), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    lines = ["# velopyro velocity: state weights (pancreas, one fit)", "",
             f"{res['epochs']} epochs, {res['fit_seconds']:.0f} s; `python -m benchmarks.velocity_weights`", "",
             "| state weights | CBDir mean | ICVCoh mean |", "|---|---|---|"]
    for w, r in res["weights"].items():
        lines.append(f"| {w} | {r['cbdir']['mean']:.3f} | {r['icvcoh']['mean']:.3f} |")
    names = list(res["weights"]["posterior"]["cbdir"]["per_transition"])
    lines += ["", "| transition | " + " | ".join(res["weights"]) + " |", "|---|" + "---|" * len(res["weights"])]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r['cbdir']['per_transition'][n]:.3f}"
                                              for r in res["weights"].values()) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return res


if __name__ == "__main__":
    main()
