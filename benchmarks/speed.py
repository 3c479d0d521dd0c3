"""velopyro's speed against velovi 0.3.1 in one run: the five figures of issue 15.

    python -m benchmarks.speed            # writes benchmarks/results/speed/results.{json,md}
    python -m benchmarks.speed --quick    # smoke test (tiny data, 2 epochs), writes nothing unless --out

1. **Seconds per epoch, per variant**: velovi and every velopyro variant (state coupling x q(pi | z),
   ``pi_guide="collapsed"`` included; ``jit=True`` and ``compile=True`` on the default) fitted for
   ``--epochs`` epochs (>= 10; no early stopping) on pancreas (the velovi tutorial's preprocessing,
   :func:`benchmarks.data.pancreas`) and on the 3,000 x 1,000 scVelo simulation; the median epoch (first
   epoch dropped) and the whole call (model set-up + ``fit()`` / ``train()``), each as a ratio to velovi.
   velovi runs first and last on each data set and the ratios use the mean of its two runs, so a change of
   load during the section hits both sides.
2. **Count likelihoods against the Normal** on pancreas (``velopyro.pp.preprocess``, raw counts of the same
   genes): median epoch of the Poisson and the negative binomial over the Normal's, interleaved rounds.
3. **Read-out time**: ``write_to_adata(n_samples=25)`` after a pancreas fit, in epochs of that fit (and
   velovi's velocity, latent time and state assignment with 25 samples, in velovi epochs).
4. **Time to a converged fit**: velovi and velopyro fitted to early stopping (patience 45, at most 500
   epochs) on pancreas with the same validation cells; whole-call ratio, time to each tool's best epoch,
   and the held-out log-likelihood per cell both reach (:func:`benchmarks.metrics.heldout_loglik`).
   ``--ttf-candidates`` adds velopyro training candidates of :mod:`benchmarks.time_to_fit`.

Both tools run with 2 torch threads and batch size 256 unless a candidate says otherwise. The machine may be
shared: the load average is recorded before and after each section; only ratios taken in this one run mean
anything.
"""

from __future__ import annotations

from benchmarks.common import set_threads

set_threads()  # before numpy/torch spin up their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.common import RESULTS_DIR, Stopwatch, layer_array, quiet  # noqa: E402

OUT = RESULTS_DIR / "speed"

#: velopyro variants of section 1: name -> (state_coupling, pi_guide, fit options)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "independent,dirichlet (default)": ("independent", "dirichlet", {}),
    "independent,dirichlet,jit": ("independent", "dirichlet", {"jit": True}),
    "independent,logistic_normal": ("independent", "logistic_normal", {}),
    "independent,collapsed": ("independent", "collapsed", {}),
    "shared,dirichlet": ("shared", "dirichlet", {}),
    "shared,logistic_normal": ("shared", "logistic_normal", {}),
    "shared,collapsed": ("shared", "collapsed", {}),
    # torch.compile of the pure-tensor parts (benchmarks.compile_speed.compiled_parts): not a velopyro option;
    # last, as its compilation takes minutes on a busy machine
    "independent,dirichlet,compile": ("independent", "dirichlet", {"_compile": True}),
}
QUICK_VARIANTS = ("independent,dirichlet (default)", "independent,collapsed", "independent,dirichlet,jit")


def _load() -> float:
    return float(os.getloadavg()[0])


def _compiled_training():
    """Patch ``VeloPyro.fit``'s trainer so that it trains inside :func:`benchmarks.compile_speed.compiled_parts`."""
    from unittest import mock

    import velopyro.api
    from benchmarks.compile_speed import compiled_parts

    plain = velopyro.api.train_svi

    def train_svi(model, guide, *args, **kwargs):
        with compiled_parts(model, guide):
            return plain(model, guide, *args, **kwargs)

    return mock.patch.object(velopyro.api, "train_svi", train_svi)


def _fit_row(adapter, adata, dataset: str, epochs: int) -> dict:
    import contextlib

    compiled = adapter.fit_kwargs.pop("_compile", False) if hasattr(adapter, "fit_kwargs") else False
    with _compiled_training() if compiled else contextlib.nullcontext():
        rec = adapter.fit(adata.copy(), dataset, max_epochs=epochs, early_stopping=False)
    return {"seconds_per_epoch": rec.seconds_per_epoch, "whole_call_seconds": rec.setup_seconds + rec.wall_seconds,
            "cpu_seconds": rec.cpu_seconds, "epochs": rec.n_epochs, "epoch_seconds": rec.epoch_seconds}


def section_variants(adata, dataset: str, epochs: int, names: tuple[str, ...], on_row=None,
                     velovi_first: bool = True) -> dict:
    """Figure 1 on one data set: velovi (first and last) and each velopyro variant, ``epochs`` epochs each
    (``on_row(partial_section)`` is called after each run, e.g. to save progress)."""
    from benchmarks.run_velopyro import VelopyroAdapter
    from benchmarks.run_velovi import VeloviAdapter

    out: dict = {"load_before": _load(), "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}
    rows: dict = {}
    order = ([("velovi (first)", None)] if velovi_first else []) + [(n, VARIANTS[n]) for n in names] + [
        ("velovi (last)", None)]
    for key, spec in order:
        try:
            if spec is None:
                adapter = VeloviAdapter(n_samples=1)
            else:
                coupling, guide, fit_kwargs = spec
                adapter = VelopyroAdapter(n_samples=1, state_coupling=coupling, pi_guide=guide,
                                          fit_kwargs=dict(fit_kwargs))
            rows[key] = _fit_row(adapter, adata, dataset, epochs)
            print(f"[{dataset}] {key}: {rows[key]['seconds_per_epoch']:.3f} s/epoch, whole call "
                  f"{rows[key]['whole_call_seconds']:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - record and carry on
            rows[key] = {"error": f"{type(e).__name__}: {e}"[:400]}
            traceback.print_exc()
        if on_row is not None:
            on_row({**out, "rows": rows, "load_after": _load()})
    _ratios(out, rows)
    out["rows"] = rows
    out["load_after"] = _load()
    return out


def _ratios(out: dict, rows: dict) -> None:
    """Each velopyro row's ratios to the mean of velovi's two runs (wall s/epoch, whole call, CPU s/epoch)."""
    ref = [rows[k] for k in ("velovi (first)", "velovi (last)") if "error" not in rows.get(k, {"error": 1})]
    for r in rows.values():
        if "cpu_seconds" in r:
            r["cpu_seconds_per_epoch"] = r["cpu_seconds"] / r["epochs"]
    for measure in ("seconds_per_epoch", "whole_call_seconds", "cpu_seconds_per_epoch"):
        base = float(np.mean([r[measure] for r in ref])) if ref else float("nan")
        out[f"velovi_{measure}"] = base
        for key, r in rows.items():
            if "error" not in r and not key.startswith("velovi"):
                r[f"{measure}_ratio"] = r[measure] / base


def section_counts(epochs: int, rounds: int, quick: bool) -> dict:
    """Figure 2: Poisson and negative binomial against the Normal on the same pancreas genes."""
    import velopyro
    from benchmarks.collapsed_speed import _data

    adata = _data()
    if quick:
        adata = adata[:800].copy()
        keep = np.ones(adata.n_vars, dtype=bool)
        for key in ("raw_spliced", "raw_unspliced", "Ms", "Mu"):
            if key in adata.layers:
                x = layer_array(adata, key)
                keep &= x.max(0) > x.min(0)
        adata = adata[:, keep].copy()
    out: dict = {"load_before": _load(), "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}
    secs: dict[str, list[float]] = {k: [] for k in ("normal", "poisson", "negative_binomial")}
    for _ in range(rounds):
        for lik in secs:
            m = velopyro.VeloPyro(adata, likelihood=lik)
            m.fit(max_epochs=1 + epochs, early_stopping=False, progress_bar=False, seed=0)
            secs[lik] += [float(x) for x in m.history["seconds"][1:]]
    med = {k: float(np.median(v)) for k, v in secs.items()}
    out.update(median_seconds=med, epoch_seconds=secs,
               ratio_to_normal={k: med[k] / med["normal"] for k in ("poisson", "negative_binomial")},
               load_after=_load())
    return out


def section_readout(adata, epochs: int, n_samples: int) -> dict:
    """Figure 3: ``write_to_adata`` after a short pancreas fit, in epochs of that fit; velovi's read-outs beside."""
    import velopyro
    from benchmarks.run_velovi import VeloviAdapter

    out: dict = {"load_before": _load(), "n_samples": n_samples}
    work = adata.copy()
    m = velopyro.VeloPyro(work, spliced_layer="Ms", unspliced_layer="Mu")
    m.fit(max_epochs=epochs, early_stopping=False, progress_bar=False, seed=0)
    epoch = float(np.median(m.history["seconds"][1:] if len(m.history["seconds"]) > 2 else m.history["seconds"]))
    with Stopwatch() as sw:
        m.write_to_adata(work, n_samples=n_samples)
    out["velopyro"] = {"write_to_adata_seconds": sw.seconds, "epoch_seconds": epoch,
                       "in_epochs": sw.seconds / epoch}
    v = VeloviAdapter(n_samples=n_samples)
    rec = v.fit(adata.copy(), "pancreas", max_epochs=epochs, early_stopping=False)
    with Stopwatch() as sw:
        v.velocity()
        v.latent_time()
        v.state_probs()
    out["velovi"] = {"readout_seconds": sw.seconds, "epoch_seconds": rec.seconds_per_epoch,
                     "in_epochs": sw.seconds / rec.seconds_per_epoch}
    out["load_after"] = _load()
    return out


def section_time_to_fit(adata, max_epochs: int, candidates: tuple[str, ...], every: int) -> dict:
    """Figure 4: velovi and velopyro (default and candidates) to early stopping, same validation cells."""
    from benchmarks import metrics, time_to_fit
    from benchmarks.run_velovi import VeloviAdapter

    out: dict = {"load_before": _load(), "max_epochs": max_epochs}
    v = VeloviAdapter(n_samples=25)
    t0 = time.perf_counter()
    rec = v.fit(adata.copy(), "pancreas", max_epochs=max_epochs, early_stopping=True, seed=0)
    whole = time.perf_counter() - t0
    val = v.validation_indices
    u, s = layer_array(adata, "Mu"), layer_array(adata, "Ms")
    ll = metrics.heldout_loglik(v.state_mean_draws(val, n_samples=10), u[val], s[val])["mean_per_cell"]
    best = int(np.nanargmin(rec.validation_loss)) + 1 if rec.validation_loss else rec.n_epochs
    out["velovi"] = {"whole_call_seconds": whole, "epochs": rec.n_epochs, "best_epoch": best,
                     "seconds_to_best": float(np.sum(rec.epoch_seconds[:best])), "heldout_loglik_per_cell": ll,
                     "cpu_seconds": rec.cpu_seconds}
    print(f"[time to fit] velovi: {rec.n_epochs} epochs, {whole:.0f} s, held-out {ll:.1f}", flush=True)
    for name in ("default",) + tuple(c for c in candidates if c != "default"):
        t0 = time.perf_counter()
        row = time_to_fit.run_one(name, 0, every, max_epochs=max_epochs, validation_indices=val, write=False,
                                  adata=adata, target=ll)
        row["whole_call_seconds_incl_heldout_hook"] = time.perf_counter() - t0
        whole_v = row["fit_seconds_minus_heldout"]
        b = row["best_epoch"]
        row_out = {"whole_call_seconds": whole_v, "epochs": row["n_epochs"], "best_epoch": b,
                   "seconds_to_best": float(np.sum(row["epoch_seconds"][:b])),
                   "heldout_loglik_per_cell": row["heldout_loglik_per_cell"],
                   "first_epoch_reaching_velovi_heldout": row["first_epoch_reaching_target"],
                   "seconds_to_velovi_heldout": row["seconds_to_target"], "fit_kwargs": row["fit_kwargs"],
                   "batch_size": row["batch_size"]}
        for k in ("whole_call_seconds", "seconds_to_best"):
            row_out[f"{k}_ratio"] = row_out[k] / out["velovi"][k]
        if row_out["seconds_to_velovi_heldout"] is not None:
            row_out["seconds_to_velovi_heldout_ratio"] = (row_out["seconds_to_velovi_heldout"]
                                                          / out["velovi"]["whole_call_seconds"])
        out[f"velopyro:{name}"] = row_out
        print(f"[time to fit] velopyro {name}: {row['n_epochs']} epochs, {whole_v:.0f} s "
              f"({row_out['whole_call_seconds_ratio']:.2f}x), held-out {row['heldout_loglik_per_cell']:.1f}",
              flush=True)
    out["load_after"] = _load()
    return out


def section_time_to_fit_estimate(per_epoch_ratio: float, per_epoch_ratio_cpu: float | None) -> dict:
    """Figure 4 without new fits: epochs to early stopping from the committed 3-seed pancreas runs of
    :mod:`benchmarks.direction` (velovi ``default``, velopyro ``steady_state_init`` = today's default), times
    the per-epoch ratio measured in this run's figure 1."""
    runs = RESULTS_DIR / "direction" / "runs"
    epochs = {}
    for tool, variant in (("velovi", "default"), ("velopyro", "steady_state_init")):
        rows = [json.loads(p.read_text()) for p in sorted(runs.glob(f"pancreas_{tool}_{variant}_s*.json"))]
        epochs[tool] = {"epochs": [r["n_epochs"] for r in rows],
                        "heldout_loglik_per_cell": [r["heldout_loglik_per_cell"] for r in rows]}
    ev, ep = (float(np.mean(epochs[k]["epochs"])) for k in ("velovi", "velopyro"))
    out = {"source": str(runs.relative_to(RESULTS_DIR.parent.parent)), "runs": epochs,
           "epoch_count_ratio": ep / ev, "seconds_per_epoch_ratio": per_epoch_ratio,
           "estimated_time_to_fit_ratio": ep / ev * per_epoch_ratio}
    if per_epoch_ratio_cpu is not None:
        out["estimated_time_to_fit_ratio_cpu"] = ep / ev * per_epoch_ratio_cpu
    return out


def _f(x, fmt=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def write_markdown(res: dict, path: Path | None) -> str:
    """The five figures as markdown (written to ``path`` when given)."""
    m = res["meta"]
    lines = ["# velopyro speed against velovi 0.3.1 (issue 15's five figures)", "",
             f"`{m['command']}`; commit {m['commit']}, torch {m['torch']}, {m['threads']} threads, "
             f"{m['machine']}, {m['total_minutes']:.0f} minutes. Load average (1 min) before / after each "
             "section is given: the 2 cores were shared with other users' jobs, so only ratios taken in this "
             "run are meaningful.", ""] + ([m["notes"], ""] if m.get("notes") else [])
    for ds, sec in res.get("variants", {}).items():
        _ratios(sec, sec["rows"])
        lines += [f"## 1. Seconds per epoch: {ds} ({sec['n_cells']} x {sec['n_genes']}, {m['epochs']} epochs)",
                  "", f"velovi: {_f(sec.get('velovi_seconds_per_epoch'), '.3f')} s/epoch, whole call "
                  f"{_f(sec.get('velovi_whole_call_seconds'), '.1f')} s (mean of its first and last run); load "
                  f"{sec['load_before']:.1f} -> {sec['load_after']:.1f}.", "",
                  "| run | s/epoch (median) | ratio | whole call s | ratio | CPU s/epoch (whole call / epochs) "
                  "| ratio |", "|---|---|---|---|---|---|---|"]
        for k, r in sec["rows"].items():
            if "error" in r:
                lines.append(f"| {k} | error: {r['error'][:80]} | | | | | |")
                continue
            lines.append(f"| {k} | {r['seconds_per_epoch']:.3f} | {_f(r.get('seconds_per_epoch_ratio'))}x | "
                         f"{r['whole_call_seconds']:.1f} | {_f(r.get('whole_call_seconds_ratio'))}x | "
                         f"{_f(r.get('cpu_seconds_per_epoch'))} | {_f(r.get('cpu_seconds_per_epoch_ratio'))}x |")
        lines.append("")
    if "counts" in res:
        c = res["counts"]
        lines += ["## 2. Count likelihoods against the Normal (pancreas, same genes)", "",
                  f"{c['n_cells']} x {c['n_genes']}, median epoch; load {c['load_before']:.1f} -> "
                  f"{c['load_after']:.1f}.", "", "| likelihood | s/epoch | vs normal |", "|---|---|---|"]
        for k, v in c["median_seconds"].items():
            lines.append(f"| {k} | {v:.3f} | {_f(c['ratio_to_normal'].get(k, 1.0))}x |")
        lines.append("")
    if "readout" in res:
        r = res["readout"]
        lines += ["## 3. Read-out time (pancreas)", "",
                  f"velopyro `write_to_adata(n_samples={r['n_samples']})`: "
                  f"{r['velopyro']['write_to_adata_seconds']:.1f} s"
                  f" = {r['velopyro']['in_epochs']:.1f} epochs ({r['velopyro']['epoch_seconds']:.2f} s/epoch). "
                  f"velovi velocity + latent time + state assignment ({r['n_samples']} samples): "
                  f"{r['velovi']['readout_seconds']:.1f} s = {r['velovi']['in_epochs']:.1f} velovi epochs. Load "
                  f"{r['load_before']:.1f} -> {r['load_after']:.1f}.", ""]
    if "time_to_fit" in res:
        t = res["time_to_fit"]
        lines += ["## 4. Time to a converged fit (pancreas, early stopping, same validation cells)", "",
                  f"Load {t['load_before']:.1f} -> {t['load_after']:.1f}.", "",
                  "| tool | epochs (best / stop) | whole call s | ratio | s to best epoch | ratio | "
                  "s to velovi's held-out (ratio to velovi's whole call) | held-out log-lik / cell |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, r in t.items():
            if not isinstance(r, dict):
                continue
            reach = r.get("seconds_to_velovi_heldout")
            reach_s = "" if k == "velovi" else "not reached" if reach is None else (
                f"{reach:.0f} ({_f(r.get('seconds_to_velovi_heldout_ratio'))}x)")
            lines.append(f"| {k} | {r['best_epoch']} / {r['epochs']} | {r['whole_call_seconds']:.0f} | "
                         f"{_f(r.get('whole_call_seconds_ratio', 1.0))}x | {r['seconds_to_best']:.0f} | "
                         f"{_f(r.get('seconds_to_best_ratio', 1.0))}x | {reach_s} | "
                         f"{r['heldout_loglik_per_cell']:.1f} |")
        lines.append("")
    if "time_to_fit_estimate" in res:
        t = res["time_to_fit_estimate"]
        ev, ep = t["runs"]["velovi"], t["runs"]["velopyro"]
        lines += ["## 4. Time to a converged fit, from the committed 3-seed runs (pancreas)", "",
                  f"Epochs to early stopping (patience 45, at most 500), `{t['source']}`: velovi "
                  f"{ev['epochs']} (held-out log-lik / cell {np.mean(ev['heldout_loglik_per_cell']):.1f}), velopyro "
                  f"default {ep['epochs']} ({np.mean(ep['heldout_loglik_per_cell']):.1f}): "
                  f"{t['epoch_count_ratio']:.2f}x "
                  f"the epochs. Times this run's per-epoch ratio on pancreas ({t['seconds_per_epoch_ratio']:.2f}x "
                  f"wall, median epoch): **{t['estimated_time_to_fit_ratio']:.2f}x** velovi's time to a converged "
                  "fit" + (f" ({t['estimated_time_to_fit_ratio_cpu']:.2f}x with process CPU time per epoch)."
                           if "estimated_time_to_fit_ratio_cpu" in t else "."), ""]
    text = "\n".join(lines)
    if path is not None:
        path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> dict:
    """Run the sections and write ``results.json`` and ``results.md``.

    Parameters
    ----------
    argv
        Command-line arguments (see ``--help``).

    Returns
    -------
    dict
        Everything measured.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: small data, 2 epochs, few variants")
    p.add_argument("--epochs", type=int, default=11, help="epochs per variant in section 1 (first dropped)")
    p.add_argument("--only", nargs="+",
                   choices=("variants", "sim_variants", "counts", "readout", "time_to_fit_estimate",
                            "time_to_fit"))
    p.add_argument("--no-velovi-first", action="store_true",
                   help="simulation: time velovi after the variants only (its first run taken elsewhere)")
    p.add_argument("--sim-variants", nargs="*", choices=tuple(VARIANTS),
                   help="velopyro variants on the simulation (default: all)")
    p.add_argument("--ttf-candidates", nargs="*", default=[], help="benchmarks.time_to_fit candidates")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/speed)")
    p.add_argument("--render", action="store_true", help="only rewrite results.md from the folder's results.json")
    args = p.parse_args(argv)
    if args.render:
        folder = args.out or OUT
        res = json.loads((folder / "results.json").read_text())
        print(write_markdown(res, folder / "results.md"))
        return res
    quiet()
    import subprocess

    import torch

    from benchmarks import data

    t0 = time.perf_counter()
    sections = args.only or ("variants", "counts", "readout", "time_to_fit_estimate")
    epochs = 2 if args.quick else args.epochs
    res: dict = {}
    out = args.out if args.out is not None else (None if args.quick else OUT)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "unknown"
    cmd = "python -m benchmarks.speed" + (" --quick" if args.quick else f" --epochs {args.epochs}") + (
        f" --ttf-candidates {' '.join(args.ttf_candidates)}" if args.ttf_candidates else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")

    def save() -> str:
        res["meta"] = {"command": cmd, "commit": commit, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                       "epochs": epochs, "total_minutes": (time.perf_counter() - t0) / 60,
                       "sections": list(sections)}
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
        return write_markdown(res, None if out is None else out / "results.md")

    pancreas = data.pancreas()
    if args.quick:
        pancreas = pancreas[:600].copy()
    if "variants" in sections:
        names = QUICK_VARIANTS if args.quick else tuple(VARIANTS)
        res["variants"] = {"pancreas": section_variants(pancreas, "pancreas", epochs, names)}
        save()
    if "time_to_fit_estimate" in sections and "variants" in res:
        row = res["variants"]["pancreas"]["rows"].get(next(iter(names)), {})
        vel = [res["variants"]["pancreas"]["rows"].get(k, {}) for k in ("velovi (first)", "velovi (last)")]
        cpu = [r["cpu_seconds"] / r["epochs"] for r in vel if "cpu_seconds" in r]
        cpu_ratio = (row["cpu_seconds"] / row["epochs"]) / float(np.mean(cpu)) if cpu and "cpu_seconds" in row else None
        if "seconds_per_epoch_ratio" in row:
            res["time_to_fit_estimate"] = section_time_to_fit_estimate(row["seconds_per_epoch_ratio"], cpu_ratio)
            save()
    if "counts" in sections:
        res["counts"] = section_counts(epochs, 1 if args.quick else 2, args.quick)
        save()
    if "readout" in sections:
        res["readout"] = section_readout(pancreas, epochs, 3 if args.quick else 25)
        save()
    if ("variants" in sections or "sim_variants" in sections) and not args.quick:  # the longest section last
        sim = data.scvelo_simulation(3000, 1000, block_size=25, with_truth=False)
        names = tuple(args.sim_variants or VARIANTS)

        def progress(partial: dict) -> None:
            res.setdefault("variants", {})["sim3000x1000"] = partial
            save()

        res.setdefault("variants", {})["sim3000x1000"] = section_variants(sim, "sim", epochs, names, progress,
                                                                            velovi_first=not args.no_velovi_first)
        save()
    if "time_to_fit" in sections:
        res["time_to_fit"] = section_time_to_fit(pancreas, 3 if args.quick else 500, tuple(args.ttf_candidates),
                                                 every=1 if args.quick else 5)
    text = save()
    print(text)
    return res


if __name__ == "__main__":
    main()
