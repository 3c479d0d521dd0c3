"""Cost of ``write_to_adata`` in epochs of training, before and after the one-pass streamed write.

One fresh process per code version: ``--old <git commit>`` runs the package as it was at that commit (extracted
with ``git archive`` into ``benchmarks/cache/``), otherwise this checkout. Each process simulates
``--cells`` x ``--genes`` (``velopyro.datasets.simulate``, Normal likelihood), fits ``--epochs`` epochs
(``early_stopping=False``), then times ``write_to_adata(n_samples=--n-samples)`` and measures the memory
the write adds: the peak RSS during the write (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, cross-checked by polling ``VmRSS`` every 10 ms) minus the RSS before it.
Reported: the write's seconds, the median epoch's seconds (validation included), their ratio
("epochs' time"), and the added MB. The two versions run one after the other on a shared machine;
the ratio inside one process is the comparable figure.

Run: ``python -m benchmarks.readout --old e328361`` (50,000 x 200, 25 draws; ``--only old`` / ``--only new`` runs
one version and merges it into the results).
Results: ``benchmarks/results/readout/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from benchmarks.common import BENCH_DIR, CACHE_DIR, N_THREADS, RESULTS_DIR

OUT_DIR = RESULTS_DIR / "readout"


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(args: argparse.Namespace) -> dict:
    import numpy as np

    from benchmarks.common import set_threads

    set_threads(N_THREADS)  # also OMP_WAIT_POLICY=PASSIVE (see benchmarks/README.md, timing hygiene)
    import velopyro

    adata = velopyro.datasets.simulate(args.cells, args.genes, seed=0)
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=args.epochs, early_stopping=False, progress_bar=False, seed=0)
    epoch_s = float(np.median(model.history["seconds"]))
    before = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        hwm_ok = True
    except OSError:
        hwm_ok = False
    polled = [before]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            polled.append(_status("VmRSS"))
            time.sleep(0.01)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.perf_counter()
    model.write_to_adata(n_samples=args.n_samples)
    write_s = time.perf_counter() - t0
    stop.set()
    th.join()
    peak = max(_status("VmHWM") if hwm_ok else 0.0, max(polled))
    return {"code": args.label, "cells": args.cells, "genes": args.genes, "n_samples": args.n_samples,
            "epoch_seconds": epoch_s, "write_seconds": write_s, "write_in_epochs": write_s / epoch_s,
            "write_added_mb": peak - before, "rss_before_write_mb": before,
            "velocity_mean_abs": float(np.abs(adata.layers["velocity"]).mean())}


def _old_tree(commit: str) -> Path:
    """The package at ``commit``, extracted once into the cache."""
    dest = CACHE_DIR / f"velopyro_{commit}"
    if not (dest / "velopyro").exists():
        dest.mkdir(parents=True, exist_ok=True)
        tar = dest / "src.tar"
        subprocess.run(["git", "archive", "-o", str(tar), commit, "velopyro"], cwd=BENCH_DIR.parent, check=True)
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
        tar.unlink()
    return dest


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=50_000)
    p.add_argument("--genes", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-samples", type=int, default=25)
    p.add_argument("--old", default=None, help="git commit of the 'before' code (omit to run this checkout only)")
    p.add_argument("--only", choices=("old", "new"), default=None,
                   help="run one version (results merge into results.json by version)")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--label", default="this checkout")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    runs = [("this checkout", str(BENCH_DIR.parent))]
    if args.old:
        runs.insert(0, (f"before ({args.old})", str(_old_tree(args.old))))
    if args.only:
        runs = [r for r in runs if r[0].startswith("before") == (args.only == "old")]
    res_file = OUT_DIR / "results.json"
    new_rows = []
    for label, root in runs:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, str(BENCH_DIR.parent)]),
               "OMP_NUM_THREADS": str(N_THREADS)}
        cmd = [sys.executable, "-m", "benchmarks.readout", "--worker", "--label", label, "--cells", str(args.cells),
               "--genes", str(args.genes), "--epochs", str(args.epochs), "--n-samples", str(args.n_samples)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        if res.returncode:
            raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")
        new_rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(new_rows[-1], flush=True)
    # merge with rows of other versions at this size (read now: --only runs may finish in any order)
    done = {r["code"] for r in new_rows}
    rows = [r for r in (json.loads(res_file.read_text()) if res_file.exists() else [])
            if r["code"] not in done and (r["cells"], r["genes"]) == (args.cells, args.genes)] + new_rows
    rows.sort(key=lambda r: not r["code"].startswith("before"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    res_file.write_text(json.dumps(rows, indent=1))
    lines = [f"# write_to_adata at {args.cells:,} cells x {args.genes} genes, {args.n_samples} draws\n",
             f"`python -m benchmarks.readout{' --old ' + args.old if args.old else ''}` (each version in its own "
             f"process, {N_THREADS} threads, shared machine: compare the ratios).\n",
             "| code | epoch s (median) | write_to_adata s | in epochs | memory added MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['code']} | {r['epoch_seconds']:.1f} | {r['write_seconds']:.1f} | "
                     f"{r['write_in_epochs']:.2f} | {r['write_added_mb']:.0f} |")
    (OUT_DIR / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
