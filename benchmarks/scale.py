"""Training from disk at 10k, 100k and 1M simulated cells x 500 genes: peak RSS and seconds per cell.

Each size runs in fresh subprocesses (one to simulate, one to fit), so every peak RSS is that process's own:

1. ``simulate``: ``velopyro.datasets.simulate_to_disk`` writes ``benchmarks/cache/scale_<N>x<G>.h5ad`` in
   chunks (Ms/Mu float32; 4 GB at 1M x 500); reports its peak RSS and seconds (skipped when the file exists).
2. ``fit``: ``VeloPyro(path)`` (the streamed pass: input checks, size factors, per-gene statistics over every
   cell) and a fixed number of SVI steps read from disk (``--steps`` minibatches of 256, block-shuffled
   reads): the training cells are ``--train-runs`` random runs of 128 contiguous cells anywhere in the file,
   the validation cells 1,024 random cells (one validation pass per epoch); then, for N up to
   ``--readout-max-cells``, the streamed ``write_to_adata(store=..., n_samples=--readout-samples)`` over
   every cell into a new ``.h5ad``. Reported: peak RSS of the process (``VmHWM``), RSS after import, the
   streamed pass's seconds, seconds per training step and per cell (step time / 256; an epoch over N
   cells at batch 256 takes about ``N x`` that), and the read-out's seconds.

Timings are on a machine shared with other jobs (2 cores): compare RSS across sizes, take the seconds as
indicative. Run: ``nice -n 10 python -m benchmarks.scale`` (all sizes) or ``--sizes 10000``.
Results: ``benchmarks/results/scale/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import CACHE_DIR, N_THREADS, RESULTS_DIR
from benchmarks.memory import _peak_rss_mb

OUT_DIR = RESULTS_DIR / "scale"
SIZES = (10_000, 100_000, 1_000_000)
N_GENES = 500


def _rss_mb() -> float:
    """Current RSS of this process (``VmRSS``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def data_path(n_cells: int, n_genes: int) -> Path:
    """The simulated store of this size."""
    return CACHE_DIR / f"scale_{n_cells}x{n_genes}.h5ad"


def _simulate_worker(args: argparse.Namespace) -> dict:
    from benchmarks.common import quiet, set_threads

    set_threads(N_THREADS)
    quiet()
    import velopyro

    path = data_path(args.cells, args.genes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.h5ad")
    if tmp.exists():
        tmp.unlink()
    t0 = time.perf_counter()
    velopyro.datasets.simulate_to_disk(tmp, args.cells, args.genes, seed=0)
    tmp.rename(path)
    return {"simulate_seconds": time.perf_counter() - t0, "simulate_peak_rss_mb": _peak_rss_mb(),
            "file_mb": path.stat().st_size / 2**20}


def _fit_worker(args: argparse.Namespace) -> dict:
    from benchmarks.common import quiet, set_threads

    set_threads(N_THREADS)
    quiet()
    import numpy as np

    import velopyro
    from velopyro.train import TrainConfig, train_svi

    out = {"rss_after_import_mb": _rss_mb()}
    path = data_path(args.cells, args.genes)
    t0 = time.perf_counter()
    model = velopyro.VeloPyro(str(path))
    out["streamed_pass_seconds"] = time.perf_counter() - t0
    out["rss_after_build_mb"] = _rss_mb()
    rng = np.random.default_rng(0)
    run = 128
    starts = rng.choice(args.cells // run, size=min(args.train_runs, args.cells // run - 8), replace=False) * run
    train = np.unique((starts[:, None] + np.arange(run)[None, :]).ravel())
    rest = np.setdiff1d(np.arange(args.cells), train)
    val = np.sort(rng.choice(rest, size=1024, replace=False))
    steps_per_epoch = len(train) // 256 + (len(train) % 256 >= 2)
    epochs = max(1, -(-args.steps // steps_per_epoch))
    cfg = TrainConfig(max_epochs=epochs, batch_size=256, early_stopping=False, seed=0, progress_bar=False)
    t0 = time.perf_counter()
    hist = train_svi(model.model, model.guide, model.data, train_idx=train, validation_idx=val, config=cfg)
    fit_s = time.perf_counter() - t0
    model.history, model.is_trained = hist, True
    model.train_indices, model.validation_indices = train, val
    steps = epochs * steps_per_epoch
    out.update(train_cells=len(train), validation_cells=len(val), epochs=epochs, steps=steps, fit_seconds=fit_s,
               seconds_per_step=fit_s / steps, seconds_per_cell=fit_s / (steps * 256),
               epoch_seconds_at_n=fit_s / (steps * 256) * args.cells, rss_after_fit_mb=_rss_mb(),
               peak_rss_fit_mb=_peak_rss_mb())
    if args.cells <= args.readout_max_cells:
        target = CACHE_DIR / f"scale_{args.cells}x{args.genes}_out.h5ad"
        if target.exists():
            target.unlink()
        t0 = time.perf_counter()
        model.write_to_adata(store=str(target), n_samples=args.readout_samples)
        out.update(readout_seconds=time.perf_counter() - t0, readout_samples=args.readout_samples)
        target.unlink()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _run(kind: str, args: argparse.Namespace, n: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale", "--worker", kind, "--cells", str(n), "--genes", str(args.genes),
           "--steps", str(args.steps), "--train-runs", str(args.train_runs),
           "--readout-max-cells", str(args.readout_max_cells), "--readout-samples", str(args.readout_samples)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(N_THREADS)})
    if res.returncode:
        raise RuntimeError(f"{kind} worker failed for {n} cells:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# Training from disk: simulated cells x {args.genes} genes\n",
        f"`python -m benchmarks.scale --steps {args.steps} --train-runs {args.train_runs} "
        f"--readout-max-cells {args.readout_max_cells} --readout-samples {args.readout_samples}`; "
        f"{N_THREADS} torch threads on a shared 2-core machine (seconds are indicative, RSS is not affected).\n",
        "What was measured per size, each in its own process: `VeloPyro(path)` on the .h5ad (streamed pass over "
        "every cell), a fixed number of SVI steps of 256 cells read from disk (training cells: random runs of 128 "
        "contiguous cells; 1,024 validation cells), and for N up to the read-out limit the streamed "
        "`write_to_adata(store=...)` over every cell. s/epoch at N = seconds per cell x N.\n",
        "| cells | file MB | simulate peak RSS MB | fit peak RSS MB | RSS after import MB | streamed pass s | "
        "steps | s/step | s/cell (epoch) | s/epoch at N | read-out s (draws) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in rows:
        ro = f"{r['readout_seconds']:.0f} ({r['readout_samples']})" if "readout_seconds" in r else "not run"
        lines.append(
            f"| {r['cells']:,} | {r.get('file_mb', nan):.0f} | {r.get('simulate_peak_rss_mb', nan):.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_after_import_mb']:.0f} | {r['streamed_pass_seconds']:.1f} | "
            f"{r['steps']} | {r['seconds_per_step']:.3f} | {r['seconds_per_cell'] * 1e3:.3f} ms | "
            f"{r['epoch_seconds_at_n']:.0f} | {ro} |"
        )
    peaks = [r["peak_rss_mb"] for r in rows]
    if len(peaks) > 1:
        lines.append(f"\nPeak RSS, largest / smallest size: {max(peaks) / min(peaks):.2f}x.")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: all sizes (parent) or one worker."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--genes", type=int, default=N_GENES)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--train-runs", type=int, default=64)
    p.add_argument("--readout-max-cells", type=int, default=100_000)
    p.add_argument("--readout-samples", type=int, default=1)
    p.add_argument("--worker", choices=("simulate", "fit"))
    p.add_argument("--cells", type=int)
    args = p.parse_args()
    if args.worker:
        fn = _simulate_worker if args.worker == "simulate" else _fit_worker
        print(json.dumps(fn(args)))
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    res_file = OUT_DIR / "results.json"
    rows = {r["cells"]: r for r in json.loads(res_file.read_text())} if res_file.exists() else {}
    for n in args.sizes:
        row = dict(rows.get(n, {}), cells=n, genes=args.genes)
        if not data_path(n, args.genes).exists():
            row.update(_run("simulate", args, n))
            print(f"simulated {n}: {row}", flush=True)
        row.update(_run("fit", args, n))
        print(f"fit {n}: {row}", flush=True)
        rows[n] = row
        res_file.write_text(json.dumps(sorted(rows.values(), key=lambda r: r["cells"]), indent=1))
        (OUT_DIR / "results.md").write_text(_markdown(sorted(rows.values(), key=lambda r: r["cells"]), args))


if __name__ == "__main__":
    main()
