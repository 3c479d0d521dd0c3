"""Recovery of the time-dependent kinetics' truth on its own simulator, beside the constant kinetics and the
untrained model (issue 13).

The data: :func:`velopyro.datasets.simulate` with ``kinetics="time_dependent"`` (Normal likelihood on the
kinetic scale). Each seed simulates one data set and fits the time-dependent and the constant kinetics with the
same settings as ``tests/test_kinetics_model.py``; the untrained time-dependent model is scored too. Scores:
Spearman correlations with the truth of the cell latent time (the median over genes) against the clock, and of
the rate ratios the data identify (absolute rates trade off against each gene's time scale): ``gamma / beta``,
the induction steady states ``alpha_1 / beta`` (u) and ``alpha_1 / gamma`` (s), and the transcription ramp,
``lambda_alpha / beta`` and ``alpha / alpha_1``; the median fitted ``alpha / alpha_1`` (1 at the start); the
velocity sign accuracy and the held-out log-likelihood per cell.

Usage::

    python -m benchmarks.kinetics_recovery run --seeds 0 1 2   # one JSON per seed in results/kinetics/runs/
    python -m benchmarks.kinetics_recovery report              # recovery.json and recovery.md, mean ± sd

"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "kinetics"
#: Data and fit settings (those of the recovery test).
SIM = {"n_cells": 500, "n_genes": 30}
FIT = {"max_epochs": 150, "batch_size": 128, "progress_bar": False}
MODEL = {"rate_init": "constant"}


def scores(model, adata) -> dict:
    """Spearman correlations of the fit (or of the untrained model) with the simulated truth."""
    import numpy as np
    from scipy.stats import spearmanr

    trained, model.is_trained = model.is_trained, True  # the untrained model answers the same queries
    try:
        r, t = model.get_rates(), model.get_latent_time(n_samples=10)
        v = model.get_velocity(n_samples=10)
        ll = float(model.get_log_likelihood(n_samples=5, indices=model.validation_indices).mean()) if trained \
            else None
    finally:
        model.is_trained = trained
    tv = adata.var
    sp = lambda a, b: float(spearmanr(a, b)[0])  # noqa: E731 - NaN for a constant input (the untrained rates)
    a1 = r.get("alpha_1", r["alpha"])  # the constant kinetics' alpha is its induction steady-state rate
    out = {"time_cell": sp(np.median(t, 1), adata.obs["true_t"]),
           "velocity_sign_accuracy": float((np.sign(v) == np.sign(adata.layers["true_velocity"])).mean()),
           "gamma/beta": sp(r["gamma"] / r["beta"], tv["true_gamma"] / tv["true_beta"]),
           "alpha_1/beta": sp(a1 / r["beta"], tv["true_alpha_1"] / tv["true_beta"]),
           "alpha_1/gamma": sp(a1 / r["gamma"], tv["true_alpha_1"] / tv["true_gamma"]),
           "heldout_loglik_per_cell": ll}
    if "lambda_alpha" in r:
        out["lambda_alpha/beta"] = sp(r["lambda_alpha"] / r["beta"], tv["true_lambda_alpha"] / tv["true_beta"])
        out["alpha/alpha_1"] = sp(r["alpha"] / r["alpha_1"], tv["true_alpha"] / tv["true_alpha_1"])
        out["median alpha/alpha_1 (fitted; truth below)"] = float(np.median(r["alpha"] / r["alpha_1"]))
        out["median alpha/alpha_1 (truth)"] = float(np.median(tv["true_alpha"] / tv["true_alpha_1"]))
    return out


def run(seed: int) -> list[dict]:
    """One simulated data set; rows for the untrained, time-dependent and constant models."""
    import velopyro

    adata = velopyro.datasets.simulate(**SIM, seed=seed, kinetics="time_dependent")
    rows = []
    untrained = velopyro.VeloPyro(adata, kinetics="time_dependent", **MODEL)
    rows.append({"model": "time_dependent, untrained", "seed": seed, **scores(untrained, adata)})
    for kin in ("time_dependent", "constant"):
        t0 = time.time()
        m = velopyro.VeloPyro(adata, kinetics=kin, **MODEL).fit(**FIT, seed=seed)
        rows.append({"model": kin, "seed": seed, "fit_seconds": time.time() - t0,
                     "epochs": len(m.history["epoch"]), **scores(m, adata)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict]) -> str:
    """Mean ± sd over seeds per model and score."""
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = [k for k in rows[-1] if k not in ("model", "seed", "fit_seconds", "epochs")]
    keys += [k for r in rows for k in r if k not in keys and k not in ("model", "seed", "fit_seconds", "epochs")]
    keys = list(dict.fromkeys(keys))

    def cell(model: str, key: str) -> str:
        xs = [r[key] for r in rows if r["model"] == model and r.get(key) is not None]
        xs = [x for x in xs if np.isfinite(x)]
        if not xs:
            return "-"
        a = np.asarray(xs)
        return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f} (n={len(a)})"

    lines = ["# Time-dependent kinetics on its own simulator", "",
             f"`python -m benchmarks.kinetics_recovery`: {SIM['n_cells']} cells x {SIM['n_genes']} genes, "
             f"{FIT['max_epochs']} epochs, rate_init={MODEL['rate_init']!r}; Spearman with the truth, mean ± sd "
             "over seeds ('-': undefined, a constant fitted value).", "",
             "| score | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {k} | " + " | ".join(cell(m, k) for m in models) + " |" for k in keys]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: ``run`` fits each seed (one JSON per seed), ``report`` aggregates them."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    args = p.parse_args(argv)
    runs = OUT / "runs"
    if args.cmd == "run":
        set_threads(args.threads)
        from benchmarks.common import quiet

        quiet()
        runs.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            (runs / f"seed{seed}.json").write_text(json.dumps(run(seed), indent=1))
        return
    rows = [row for path in sorted(runs.glob("seed*.json")) for row in json.loads(path.read_text())]
    (OUT / "recovery.json").write_text(json.dumps(rows, indent=1))
    text = report(rows)
    (OUT / "recovery.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
