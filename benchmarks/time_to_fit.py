"""Time to a converged fit on pancreas: training-schedule candidates, one curve per run.

    python -m benchmarks.time_to_fit run --candidate default --seed 0
    python -m benchmarks.time_to_fit report

One run fits velopyro on the preprocessed pancreas data (:func:`benchmarks.data.pancreas`) to early stopping
(patience 45, ``max_epochs`` 500) with the candidate's training options, holding out velovi's validation
cells at that seed (from a ``benchmarks.direction`` velovi run when its arrays are cached). Every epoch it
records the wall and process CPU time, the validation -ELBO per cell, and every ``--every`` epochs the
shared held-out log-likelihood per cell (:func:`benchmarks.metrics.heldout_loglik`, 3 posterior draws; the
metric both tools are compared on) of the current state. The held-out evaluation runs inside the validation
pass's hook with its own random state (:func:`velopyro._rng.seeded`), so the training itself is the same
as an uninstrumented fit; its cost is subtracted from the epoch times. Rows go to
``benchmarks/results/speed/time_to_fit/``; ``report`` tabulates epochs, seconds and CPU seconds to the
best epoch and to early stopping, and the first epoch whose held-out log-likelihood reaches a target.

Timings of separate runs are taken under different loads of a shared machine: compare epochs and CPU
seconds, and take the cost of an epoch at each batch size from :mod:`benchmarks.speed` (interleaved).
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import CACHE_DIR, RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "speed" / "time_to_fit"

#: Candidates: keyword arguments of ``VeloPyro.fit``.
CANDIDATES: dict[str, dict] = {
    "default": {},
    "b512_lr1.4e-2": {"batch_size": 512, "lr": 1.4e-2},
    "b1024_lr2e-2": {"batch_size": 1024, "lr": 2e-2},
    "b1024_lr4e-2": {"batch_size": 1024, "lr": 4e-2},
    "lr2e-2": {"lr": 2e-2},
}


def _velovi_validation(seed: int):
    import numpy as np

    path = CACHE_DIR / "direction" / f"pancreas_velovi_default_s{seed}.npz"
    return np.load(path)["validation_indices"] if path.exists() else None


def run_one(candidate: str, seed: int, every: int, max_epochs: int = 500, fit_kwargs: dict | None = None, *,
            validation_indices=None, write: bool = True, adata=None, target: float | None = None) -> dict:
    """Fit one candidate at one seed and record its curves (see the module docstring).

    Parameters
    ----------
    candidate
        A key of :data:`CANDIDATES` (used as the row's name; ``fit_kwargs`` overrides its options).
    seed
        Seed of the fit (and of velovi's validation split that is imposed).
    every
        Held-out log-likelihood every this many epochs (and at the last).
    max_epochs
        Upper bound on epochs.
    fit_kwargs
        Training options instead of the candidate's.
    validation_indices
        Cells to hold out (default: velovi's at ``seed`` when cached, else velopyro's own split).
    write
        Write the row to ``OUT``.
    adata
        The data (default: :func:`benchmarks.data.pancreas`).
    target
        A held-out log-likelihood per cell: the row gets the first curve epoch reaching it and the seconds
        (sum of epoch times) to it.

    Returns
    -------
    dict
        The row written to ``OUT / f"{candidate}_s{seed}.json"``.
    """
    import numpy as np

    import velopyro.train as vtrain
    from benchmarks import data, metrics
    from benchmarks.common import layer_array
    from benchmarks.run_velopyro import VelopyroAdapter
    from velopyro import posterior
    from velopyro._rng import seeded

    adata = data.pancreas() if adata is None else adata
    val = _velovi_validation(seed) if validation_indices is None else validation_indices
    kwargs = dict(CANDIDATES[candidate] if fit_kwargs is None else fit_kwargs)
    adapter = VelopyroAdapter(n_samples=25, fit_kwargs=kwargs)
    u_all, s_all = layer_array(adata, "Mu"), layer_array(adata, "Ms")
    curve: dict[str, list] = {"epoch": [], "cpu": [], "wall": [], "validation_loss": [], "heldout_epoch": [],
                              "heldout": [], "heldout_seconds": []}
    original = vtrain.elbo_per_cell
    clock = {"cpu": time.process_time(), "wall": time.perf_counter()}
    partial = OUT / f"{candidate}_s{seed}.partial.json"

    def heldout(model, guide, vdata, idx) -> float:
        lik = model.likelihood.gene_params()
        sig = {k: v.detach().cpu().numpy() for k, v in lik.items()}
        parts: dict[int, dict[str, list]] = {}
        for _, sno, smp in posterior.iterate_samples(model, guide, vdata, n_samples=3, indices=idx):
            d = parts.setdefault(sno, {"mean_u": [], "mean_s": [], "pi": []})
            for k, key in (("mean_u", "u_bar"), ("mean_s", "s_bar"), ("pi", "pi")):
                d[k].append(smp[key].cpu().numpy())
        draws = []
        for sno in sorted(parts):
            draw = {k: np.concatenate(v, axis=0) for k, v in parts[sno].items()}
            draw["sigma_u"], draw["sigma_s"] = sig["sigma_u"], sig["sigma_s"]
            draws.append(draw)
        return metrics.heldout_loglik(draws, u_all[idx], s_all[idx])["mean_per_cell"]

    def hooked(model, guide, vdata, idx, device, batch_size=1024, elbo=None):
        out = original(model, guide, vdata, idx, device, batch_size=batch_size, elbo=elbo)
        epoch = len(curve["epoch"]) + 1
        curve["epoch"].append(epoch)
        if epoch % every == 0 or epoch == 1:
            was = model.training
            t0, c0 = time.perf_counter(), time.process_time()
            with seeded(10_000 + epoch):
                curve["heldout"].append(heldout(model, guide, vdata, np.asarray(idx)))
            model.train(was)
            guide.train(was)
            curve["heldout_epoch"].append(epoch)
            curve["heldout_seconds"].append(time.perf_counter() - t0)
            clock["cpu"] += time.process_time() - c0  # not charged to the epoch
            clock["wall"] += curve["heldout_seconds"][-1]
            if write:  # the curve so far, in case the run is stopped before it converges
                OUT.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"candidate": candidate, "seed": seed, "fit_kwargs": kwargs,
                                               "complete": False, **curve}, indent=1))
        now, wall = time.process_time(), time.perf_counter()
        curve["cpu"].append(now - clock["cpu"])
        curve["wall"].append(wall - clock["wall"])
        curve["validation_loss"].append(float(out))
        clock["cpu"], clock["wall"] = now, wall
        return out

    vtrain.elbo_per_cell = hooked
    try:
        t0 = time.time()
        adapter.fit(adata.copy(), "pancreas", max_epochs=max_epochs, early_stopping=True, seed=seed,
                          validation_indices=val)
        fit_s = time.time() - t0
    finally:
        vtrain.elbo_per_cell = original
    vidx = adapter.validation_indices
    ll = metrics.heldout_loglik(adapter.state_mean_draws(vidx, n_samples=10), u_all[vidx], s_all[vidx])
    hist = adapter.model.history
    # the epoch times include the held-out evaluation of that epoch: take it out
    extra = dict(zip(curve["heldout_epoch"], curve["heldout_seconds"], strict=True))
    seconds = [float(s) - extra.get(i + 1, 0.0) for i, s in enumerate(hist["seconds"])]
    row = {
        "candidate": candidate, "seed": seed, "fit_kwargs": kwargs, "n_epochs": len(seconds),
        "best_epoch": int(hist["best_epoch"]), "stopped_early": bool(hist["stopped_early"]),
        "fit_seconds_minus_heldout": fit_s - sum(curve["heldout_seconds"]), "epoch_seconds": seconds,
        "epoch_cpu_seconds": curve["cpu"], "validation_loss": [float(x) for x in hist["validation_loss"]],
        "heldout_epoch": curve["heldout_epoch"], "heldout_curve": curve["heldout"],
        "heldout_loglik_per_cell": ll["mean_per_cell"], "same_validation_cells_as_velovi": val is not None,
        "batch_size": int(hist["batch_size"]),
    }
    if target is not None:
        hit = next((e for e, v in zip(curve["heldout_epoch"], curve["heldout"], strict=True) if v >= target), None)
        row["first_epoch_reaching_target"] = hit
        row["seconds_to_target"] = None if hit is None else float(sum(seconds[:hit]))
    if write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{candidate}_s{seed}.json").write_text(json.dumps(row, indent=1))
        partial.unlink(missing_ok=True)
    return row


def report(target: float | None = None) -> str:
    """Tabulate every run in ``OUT`` (see the module docstring).

    Parameters
    ----------
    target
        Held-out log-likelihood per cell to reach (default: velovi's mean over the cached direction runs,
        or 971).

    Returns
    -------
    str
        The markdown table (also written to ``OUT / "results.md"``).
    """
    import numpy as np

    if target is None:
        runs = sorted((RESULTS_DIR / "direction" / "runs").glob("pancreas_velovi_default_s*.json"))
        vals = [json.loads(p.read_text())["heldout_loglik_per_cell"] for p in runs]
        target = float(np.mean(vals)) if vals else 971.0
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*_s*.json"))]
    lines = ["# Time to a converged fit on pancreas (velopyro training candidates)", "",
             "`python -m benchmarks.time_to_fit run --candidate NAME --seed S`, then `report`. One run per row; "
             "separate runs saw different loads, so CPU seconds and epochs are the figures to compare. "
             f"Target held-out log-likelihood per cell: {target:.1f} (velovi's mean over its 3 direction runs). "
             "A row marked *partial* is a run stopped before early stopping (its curve so far).",
             "", "| candidate | seed | options | epochs (best / stop) | CPU s / epoch (median) | "
             "CPU s to best / stop | first epoch held-out >= target (CPU s) | held-out at the last curve point "
             "(epoch) | final held-out (10 draws) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu_per = r.get("epoch_cpu_seconds", r.get("cpu"))
        cpu = np.cumsum(cpu_per)
        hit = next((e for e, v in zip(r["heldout_epoch"], r.get("heldout_curve", r.get("heldout")), strict=True)
                    if v >= target), None)
        hit_s = f"{hit} ({cpu[min(hit, len(cpu)) - 1]:.0f})" if hit else "not reached"
        curve = r.get("heldout_curve", r.get("heldout"))
        last = f"{curve[-1]:.1f} ({r['heldout_epoch'][-1]})" if curve else "-"
        opts = ", ".join(f"{k}={v}" for k, v in r["fit_kwargs"].items()) or "defaults"
        if r.get("complete", True):
            b = r["best_epoch"]
            lines.append(f"| {r['candidate']} | {r['seed']} | {opts} | {b} / {r['n_epochs']} | "
                         f"{np.median(cpu_per[1:]):.2f} | {cpu[b - 1]:.0f} / {cpu[-1]:.0f} | {hit_s} | {last} | "
                         f"{r['heldout_loglik_per_cell']:.1f} |")
        else:
            lines.append(f"| {r['candidate']} (*partial*) | {r['seed']} | {opts} | - / {len(r['epoch'])} (cut) | "
                         f"{np.median(cpu_per[1:]):.2f} | - / {cpu[-1]:.0f} | {hit_s} | {last} | - |")
    text = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line: ``run`` one candidate and seed, ``report`` all runs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--candidate", default="default", choices=sorted(CANDIDATES))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--every", type=int, default=5)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--max-epochs", type=int, default=500)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "report":
        print(report())
        return
    set_threads(args.threads)
    from benchmarks.common import quiet

    quiet()
    row = run_one(args.candidate, args.seed, args.every, max_epochs=args.max_epochs)
    print(json.dumps({k: row[k] for k in ("candidate", "n_epochs", "best_epoch", "heldout_loglik_per_cell")}))


if __name__ == "__main__":
    main()
