"""Peak resident memory of training, one fresh subprocess per (model, data size).

The parent writes the data (scVelo simulation, Ms/Mu float32) to ``benchmarks/cache/*.npz``; the worker
imports the model's libraries, loads the arrays, trains a few epochs and reports:

- ``rss_after_import_mb``: RSS once torch and the model's package are imported
- ``rss_after_load_mb``:   ... and the data are loaded (the AnnData both models receive)
- ``peak_rss_mb``:         the process's peak RSS (``VmHWM`` of ``/proc/self/status``: the high-water mark
  of this process image; ``getrusage``'s ``ru_maxrss`` would also count the parent's RSS at fork time)
- ``peak_rss_polled_mb``:  the largest RSS the parent saw while polling with psutil (a cross-check)

Run one measurement by hand: ``python -m benchmarks.memory --model velovi --cells 10000 --genes 500``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH_DIR, CACHE_DIR, N_THREADS

MODELS = ("velovi", "velopyro")


def data_file(n_cells: int, n_genes: int, seed: int = 0) -> Path:
    """Write (once) and return the ``.npz`` holding Ms/Mu for a simulated data set of this size."""
    path = CACHE_DIR / f"memory_{n_cells}x{n_genes}_s{seed}.npz"
    if not path.exists():
        from benchmarks.data import scvelo_simulation

        sim = scvelo_simulation(n_cells, n_genes, seed=seed, block_size=25, with_truth=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, Ms=np.asarray(sim.layers["Ms"], np.float32), Mu=np.asarray(sim.layers["Mu"], np.float32))
    return path


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """High-water RSS of the current process image (falls back to ``ru_maxrss`` off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(args: argparse.Namespace) -> None:
    """Child process body: import, load, fit ``args.epochs`` epochs, print one JSON line."""
    from benchmarks.common import quiet, set_threads

    set_threads(N_THREADS)
    quiet()
    import anndata as ad

    if args.model == "velovi":
        from benchmarks.run_velovi import VeloviAdapter

        adapter = VeloviAdapter()
    else:
        from benchmarks.run_velopyro import VelopyroAdapter

        adapter = VelopyroAdapter(state_coupling=args.state_coupling, pi_guide=args.pi_guide)
    out = {"rss_after_import_mb": _rss_mb()}
    with np.load(args.data) as z:
        layers = {"Ms": z["Ms"], "Mu": z["Mu"]}
    n_cells, n_genes = layers["Ms"].shape
    adata = ad.AnnData(shape=(n_cells, n_genes), layers=layers)
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    out["rss_after_load_mb"] = _rss_mb()
    t0 = time.perf_counter()
    rec = adapter.fit(adata, f"sim{n_cells}x{n_genes}", max_epochs=args.epochs, early_stopping=False)
    out["fit_seconds"] = time.perf_counter() - t0
    out["seconds_per_epoch"] = rec.seconds_per_epoch
    out["rss_end_mb"] = _rss_mb()
    out["peak_rss_mb"] = _peak_rss_mb()
    out["model_name"] = adapter.name
    print("MEMORY_RESULT " + json.dumps(out), flush=True)


def measure(
    model: str,
    n_cells: int,
    n_genes: int = 500,
    epochs: int = 1,
    timeout: float = 1800,
    state_coupling: str | None = None,
    pi_guide: str | None = None,
) -> dict:
    """Run one worker subprocess and return its measurements (``error`` set when it failed)."""
    import psutil

    path = data_file(n_cells, n_genes)
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", "--model", model, "--data", str(path)]
    cmd += ["--epochs", str(epochs)]
    if state_coupling:
        cmd += ["--state-coupling", state_coupling]
    if pi_guide:
        cmd += ["--pi-guide", pi_guide]
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    row = {"model": model, "n_cells": n_cells, "n_genes": n_genes, "epochs": epochs}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=BENCH_DIR.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0.0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss / 2**20)
        except psutil.Error:
            pass
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            row["error"] = f"timeout after {timeout:.0f} s"
            break
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    row["wall_seconds"] = time.perf_counter() - t0
    row["peak_rss_polled_mb"] = peak
    for line in stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            row.update(json.loads(line[len("MEMORY_RESULT ") :]))
            break
    else:
        row.setdefault("error", (stderr.strip().splitlines() or ["no output"])[-1][-400:])
    return row


def main() -> None:
    """CLI: ``--worker`` is the child; otherwise measure one (model, size) and print the row."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, default="velopyro")
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--state-coupling", default=None)
    parser.add_argument("--pi-guide", default=None)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    row = measure(
        args.model,
        args.cells,
        args.genes,
        args.epochs,
        state_coupling=args.state_coupling,
        pi_guide=args.pi_guide,
    )
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
