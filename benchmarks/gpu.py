"""velopyro and velovi 0.3.1 on one GPU: seconds per epoch, time to a converged fit, read-out time, peak GPU memory.

**Not yet run on a GPU in this repository**: the project has had no GPU machine so far. The script has only
been exercised on the CPU at the ``--tiny`` size (``tests/test_benchmarks_gpu.py``); no GPU figure exists yet.

    python -m benchmarks.gpu                                  # all cases, both tools, on cuda
    python -m benchmarks.gpu --cases pancreas sim100k --velovi-python /path/to/venv-bench/bin/python
    python -m benchmarks.gpu --device cpu --tiny --out /tmp/gpu_tiny   # smoke test on the CPU (seconds)

Cases (``--cases``):

- ``pancreas``: the velovi tutorial's preprocessing of ``/work/shared/data/pancreas.h5ad``
  (:func:`benchmarks.data.pancreas`, cached in ``benchmarks/cache/``; building the cache needs velovi and
  scvelo, so it runs with ``--velovi-python``), in memory.
- ``sim100k``: 100,000 cells x 2,000 genes of velopyro's simulator
  (:func:`velopyro.datasets.simulate_to_disk` into ``benchmarks/cache/``, once), read into memory.
- ``disk1m``: 1,000,000 cells x 500 genes of the same simulator (4 GB; the size of :mod:`benchmarks.scale`),
  fitted from the path (``VeloPyro(path)``: minibatches read from disk) and read out into a new ``.h5ad``
  (``write_to_adata(store=...)``). velopyro only: velovi needs the data in memory.

For each case and tool (``--tools``), one fresh subprocess, so that the peak memory is that run's own:

- **seconds per epoch**: median epoch wall time including its validation pass, leaving out the first epoch
  when there are at least three (:class:`benchmarks.common.FitRecord`; velopyro: ``history["seconds"]`` of the
  fit kept; velovi: a Lightning callback);
- **time to a converged fit**: the whole ``fit()`` / ``train()`` call with early stopping (patience 45, at most
  ``--max-epochs``), and the model set-up before it. velopyro's default ``rate_init="select"`` trains from
  two starts of gamma / beta and keeps one, so its call holds two fits (``epochs_all_starts``);
- **read-out time**: velopyro ``write_to_adata(n_samples=25)``; velovi ``get_velocity``, ``get_latent_time`` and
  ``get_state_assignment`` with 25 samples (what ``write_to_adata`` writes; as :mod:`benchmarks.speed`);
- **peak GPU memory**: ``torch.cuda.max_memory_allocated`` (reset at the start of the subprocess) after the fit
  and after the read-out, and ``max_memory_reserved``; besides, the process's peak RSS (``VmHWM``).

Both tools get the device by their own option: velopyro ``fit(device="cuda")`` (its default ``"auto"`` picks
CUDA when torch sees one; one process, no Lightning), velovi ``train(accelerator="gpu", devices=1)``. Batch
size 256 for both. ``--device cuda`` (the default) stops with a one-line error when torch sees no CUDA device.

Recorded with the results: the device name, torch / CUDA / velovi / velopyro versions, the commit and the
command. Writes ``results.json`` and ``results.md`` (one table) into ``--out`` (``benchmarks/results/gpu/``),
after every run. ``--tiny`` shrinks every case to 300 cells x 50 genes and 3 epochs (CPU testing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import CACHE_DIR, N_THREADS, RESULTS_DIR

OUT_DIR = RESULTS_DIR / "gpu"
REPO = Path(__file__).resolve().parent.parent
TOOLS = ("velovi", "velopyro")
READOUT_SAMPLES = 25
TINY_CELLS, TINY_GENES, TINY_EPOCHS = 300, 50, 3


@dataclass(frozen=True)
class Case:
    """One data set: where it comes from, its size (``None``: pancreas' own) and whether velovi runs on it."""

    name: str
    source: str  # "pancreas" (in memory), "memory" (simulated, read into memory) or "disk" (fitted from the path)
    n_cells: int | None
    n_genes: int | None
    velovi: bool


CASES = {
    "pancreas": Case("pancreas", "pancreas", None, None, velovi=True),
    "sim100k": Case("sim100k", "memory", 100_000, 2_000, velovi=True),
    "disk1m": Case("disk1m", "disk", 1_000_000, 500, velovi=False),
}


def data_path(case: Case, tiny: bool, data_dir: Path) -> Path:
    """The ``.h5ad`` file the case's runs read (Ms / Mu layers)."""
    if case.source == "pancreas":
        return data_dir / f"gpu_pancreas{'_tiny' if tiny else ''}.h5ad"
    n, g = (TINY_CELLS, TINY_GENES) if tiny else (case.n_cells, case.n_genes)
    return data_dir / f"gpu_sim_{n}x{g}.h5ad"


# ---------------------------------------------------------------------------------------------------
# workers (each in its own subprocess; the last stdout line is its JSON)
# ---------------------------------------------------------------------------------------------------


def _prepare_worker(args: argparse.Namespace) -> dict:
    """Write the case's data file (pancreas: from :func:`benchmarks.data.pancreas`; simulations: velopyro's)."""
    from benchmarks.common import quiet, set_threads

    set_threads(args.threads)
    quiet()
    import anndata as ad
    import numpy as np

    case = CASES[args.case]
    path = data_path(case, args.tiny, args.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.h5ad")
    if tmp.exists():
        tmp.unlink()
    t0 = time.perf_counter()
    if case.source == "pancreas":
        from benchmarks import data

        full = data.pancreas()
        cells, genes = np.arange(full.n_obs), np.arange(full.n_vars)
        if args.tiny:  # evenly spaced cells, the first genes that vary over them
            cells = np.linspace(0, full.n_obs - 1, TINY_CELLS).astype(int)
            varies = [np.ptp(np.asarray(full.layers[k][cells]), axis=0) > 0 for k in ("Ms", "Mu")]
            genes = np.flatnonzero(varies[0] & varies[1])[:TINY_GENES]
        sub = full[cells, genes]
        layers = {k: np.asarray(sub.layers[k], dtype=np.float32) for k in ("Ms", "Mu")}
        ad.AnnData(X=layers["Ms"].copy(), obs=sub.obs[["clusters"]].copy() if "clusters" in sub.obs else None,
                   var=sub.var[[]].copy(), layers=layers).write_h5ad(tmp)
    else:
        import velopyro

        n, g = (TINY_CELLS, TINY_GENES) if args.tiny else (case.n_cells, case.n_genes)
        velopyro.datasets.simulate_to_disk(tmp, n, g, seed=0)
    tmp.rename(path)
    return {"prepare_seconds": time.perf_counter() - t0, "file_mb": path.stat().st_size / 2**20}


def _versions() -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    for name in ("velopyro", "velovi", "scvi", "pyro"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except ImportError:
            pass
    return out


def _fit_worker(args: argparse.Namespace) -> dict:
    """Fit one tool on one case to early stopping, read out, and report times and peak memory."""
    from benchmarks.common import FitRecord, Stopwatch, quiet, set_threads
    from benchmarks.memory import _peak_rss_mb

    set_threads(args.threads)
    quiet()
    import anndata as ad
    import torch

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    case = CASES[args.case]
    path = data_path(case, args.tiny, args.data_dir)
    out: dict = {"case": case.name, "tool": args.tool, "device": args.device, "versions": _versions(),
                 "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(), "batch_size": 256, "readout_samples": READOUT_SAMPLES}

    def peak_gpu_mb() -> tuple[float | None, float | None]:
        if not cuda:
            return None, None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20

    if args.tool == "velopyro":
        import velopyro

        with Stopwatch() as setup:
            source = str(path) if case.source == "disk" else ad.read_h5ad(path)
            model = velopyro.VeloPyro(source, spliced_layer="Ms", unspliced_layer="Mu")
        n_cells, n_genes = model.n_cells, model.n_genes
        with Stopwatch() as fit:
            model.fit(max_epochs=args.max_epochs, early_stopping=True, device=args.device, progress_bar=False, seed=0)
        setup_seconds, fit_seconds = setup.seconds, fit.seconds
        hist = model.history
        epoch_seconds = [float(x) for x in hist["seconds"]]
        candidates = hist.get("rate_init_candidates") or {hist.get("rate_init"): {"epochs": len(epoch_seconds)}}
        out.update(rate_init=hist.get("rate_init"), starts=len(candidates),
                   epochs_all_starts=int(sum(c["epochs"] for c in candidates.values())))
        out["peak_gpu_fit_mb"], out["peak_gpu_reserved_fit_mb"] = peak_gpu_mb()
        if case.source == "disk":
            target = path.with_name(path.stem + "_readout.h5ad")
            if target.exists():
                target.unlink()
            with Stopwatch() as readout:
                model.write_to_adata(store=str(target), n_samples=READOUT_SAMPLES)
            target.unlink()
        else:
            with Stopwatch() as readout:
                model.write_to_adata(n_samples=READOUT_SAMPLES)
    else:
        from benchmarks.run_velovi import VeloviAdapter

        adata = ad.read_h5ad(path)
        if adata.X is None:  # simulate_to_disk writes no X
            adata.X = adata.layers["Ms"].copy()
        n_cells, n_genes = adata.n_obs, adata.n_vars
        v = VeloviAdapter(n_samples=READOUT_SAMPLES, accelerator="gpu" if cuda else "cpu")
        rec_v = v.fit(adata, case.name, max_epochs=args.max_epochs, early_stopping=True, seed=0)
        # set-up: setup_anndata and the model; fit: the train() call
        setup_seconds, fit_seconds, epoch_seconds = rec_v.setup_seconds, rec_v.wall_seconds, rec_v.epoch_seconds
        out["peak_gpu_fit_mb"], out["peak_gpu_reserved_fit_mb"] = peak_gpu_mb()
        with Stopwatch() as readout:
            v.velocity()
            v.latent_time()
            v.state_probs()
    rec = FitRecord(model=args.tool, dataset=case.name, n_cells=n_cells, n_genes=n_genes,
                    max_epochs=args.max_epochs, early_stopping=True, epoch_seconds=list(epoch_seconds))
    out.update(n_cells=int(n_cells), n_genes=int(n_genes), max_epochs=args.max_epochs, epochs=len(epoch_seconds),
               stopped_early=len(epoch_seconds) < args.max_epochs, seconds_per_epoch=rec.seconds_per_epoch,
               epoch_seconds=list(epoch_seconds), setup_seconds=setup_seconds, fit_seconds=fit_seconds,
               readout_seconds=readout.seconds)
    out["peak_gpu_mb"], out["peak_gpu_reserved_mb"] = peak_gpu_mb()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# ---------------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------------


def _worker_cmd(python: str, kind: str, args: argparse.Namespace, case: str, tool: str | None = None) -> list[str]:
    cmd = [python, "-m", "benchmarks.gpu", "--worker", kind, "--case", case, "--device", args.device,
           "--max-epochs", str(args.max_epochs), "--threads", str(args.threads), "--data-dir", str(args.data_dir)]
    cmd += ["--tool", tool] if tool else []
    return cmd + (["--tiny"] if args.tiny else [])


def _run_worker(cmd: list[str], threads: int, timeout: float | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    if res.returncode:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit status {res.returncode}"]
        raise RuntimeError(f"worker failed: {tail[0][:300]}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _has_velovi(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import velovi"], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def write_markdown(res: dict, path: Path | None = None) -> str:
    """The results as one table (written to ``path`` when given)."""
    m = res["meta"]
    gpu = m["device"] == "cuda"
    lines = ["# velopyro and velovi 0.3.1 on one GPU", "",
             f"`{m['command']}`; commit {m['commit']}, device **{m['device_name']}** ({m['device']}), torch "
             f"{m['versions'].get('torch')} (CUDA {m['versions'].get('cuda')}), velovi "
             f"{m.get('velovi_version') or 'not run'}, {m['threads']} CPU threads per run, batch size 256, "
             f"read-out with {READOUT_SAMPLES} draws, early stopping (patience 45) at most {m['max_epochs']} "
             f"epochs{', tiny sizes' if m['tiny'] else ''}; {m['total_minutes']:.1f} minutes.", ""]
    if not gpu:
        lines += ["**Not a GPU run**: measured on the CPU (no GPU memory figures).", ""]
    lines += ["Each row is one subprocess. s/epoch: median epoch wall time with its validation pass (first epoch "
              "left out from 3 epochs on). fit s: the whole `fit()` / `train()` call with early stopping (velopyro's "
              "holds one fit per `rate_init` start: epochs of all starts in brackets); set-up s: the model's "
              "construction before it. read-out s: velopyro `write_to_adata`, velovi velocity + latent time + "
              "state assignment. Peak GPU: `torch.cuda.max_memory_allocated` after the fit / after the read-out "
              "(reserved in brackets).", "",
              "| case | cells x genes | tool | s/epoch | epochs (all starts) | stopped early | fit s | set-up s | "
              "read-out s | peak GPU MB fit / total (reserved) | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r or "skipped" in r:
            why = f"error: {r['error'][:120]}" if "error" in r else f"not run: {r['skipped']}"
            lines.append(f"| {r['case']} | | {r['tool']} | {why} | | | | | | | |")
            continue
        starts = f" ({r['epochs_all_starts']})" if r.get("starts", 1) > 1 else ""
        peak = (f"{_f(r['peak_gpu_fit_mb'], '.0f')} / {_f(r['peak_gpu_mb'], '.0f')} "
                f"({_f(r['peak_gpu_reserved_mb'], '.0f')})") if r.get("peak_gpu_mb") is not None else "-"
        lines.append(f"| {r['case']} | {r['n_cells']:,} x {r['n_genes']:,} | {r['tool']} | "
                     f"{_f(r['seconds_per_epoch'], '.3f')} | {r['epochs']}{starts} | "
                     f"{'yes' if r['stopped_early'] else 'no'} | "
                     f"{_f(r['fit_seconds'], '.1f')} | {_f(r['setup_seconds'], '.1f')} | "
                     f"{_f(r['readout_seconds'], '.1f')} | {peak} | {_f(r['peak_rss_mb'], '.0f')} |")
    text = "\n".join(lines) + "\n"
    if path is not None:
        path.write_text(text)
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--max-epochs", type=int, default=None,
                   help=f"cap of the early-stopped fits (default 500; {TINY_EPOCHS} with --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help=f"every case at {TINY_CELLS} cells x {TINY_GENES} genes (CPU testing)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="results folder (default: benchmarks/results/gpu)")
    p.add_argument("--data-dir", type=Path, default=CACHE_DIR,
                   help="where the simulated / prepared data files go (default: benchmarks/cache)")
    p.add_argument("--velovi-python", default=os.environ.get("VELOPYRO_BENCH_PYTHON", sys.executable),
                   help="interpreter with velovi 0.3.1 (default: $VELOPYRO_BENCH_PYTHON, else this one)")
    p.add_argument("--threads", type=int, default=N_THREADS, help="torch CPU threads per run")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per subprocess (default: none)")
    p.add_argument("--worker", choices=("prepare", "fit"), help=argparse.SUPPRESS)
    p.add_argument("--case", choices=tuple(CASES), help=argparse.SUPPRESS)
    p.add_argument("--tool", choices=TOOLS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict | None:
    """Run the cases (or, with ``--worker``, one subprocess's part) and write ``results.json`` / ``results.md``.

    Parameters
    ----------
    argv
        Command-line arguments (see ``--help``).

    Returns
    -------
    dict or None
        Everything measured (``meta`` and one row per case and tool); None in a worker.
    """
    args = _parser().parse_args(argv)
    if args.max_epochs is None:
        args.max_epochs = TINY_EPOCHS if args.tiny else 500
    args.data_dir = args.data_dir.resolve()
    if args.worker:
        print(json.dumps(_prepare_worker(args) if args.worker == "prepare" else _fit_worker(args)))
        return None
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: --device cuda was requested but torch sees no CUDA device; "
                         "run on a GPU machine or pass --device cpu.")
    t0 = time.perf_counter()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    velovi_ok = "velovi" in args.tools and _has_velovi(args.velovi_python)
    res: dict = {"meta": {}, "rows": []}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        vv = next((r["versions"].get("velovi") for r in res["rows"] if r.get("tool") == "velovi"
                   and "versions" in r), None)
        res["meta"] = {
            "command": "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": commit, "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else
            f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
            "versions": _versions(), "velovi_version": vv, "velovi_python": args.velovi_python if velovi_ok else None,
            "threads": args.threads, "max_epochs": args.max_epochs, "tiny": args.tiny, "cases": args.cases,
            "tools": args.tools, "host": platform.node(), "total_minutes": (time.perf_counter() - t0) / 60,
            "gpu_run": args.device == "cuda",
        }
        (out / "results.json").write_text(json.dumps(res, indent=1))
        write_markdown(res, out / "results.md")

    for name in args.cases:
        case = CASES[name]
        path = data_path(case, args.tiny, args.data_dir)
        if not path.exists():  # pancreas' preprocessing needs velovi + scvelo
            python = args.velovi_python if case.source == "pancreas" and velovi_ok else sys.executable
            try:
                info = _run_worker(_worker_cmd(python, "prepare", args, name), args.threads, args.timeout)
                print(f"[{name}] data: {path} ({info['file_mb']:.0f} MB, {info['prepare_seconds']:.0f} s)", flush=True)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                for tool in args.tools:
                    res["rows"].append({"case": name, "tool": tool, "error": f"data preparation: {e}"[:2000]})
                save()
                continue
        for tool in args.tools:
            row = {"case": name, "tool": tool}
            if tool == "velovi" and not case.velovi:
                row["skipped"] = "velovi holds the data in memory; this case is fitted from disk"
            elif tool == "velovi" and not velovi_ok:
                row["skipped"] = f"velovi is not importable with {args.velovi_python}"
            else:
                python = args.velovi_python if tool == "velovi" else sys.executable
                try:
                    row.update(_run_worker(_worker_cmd(python, "fit", args, name, tool), args.threads, args.timeout))
                    print(f"[{name}] {tool}: {row['seconds_per_epoch']:.3f} s/epoch, {row['epochs']} epochs, fit "
                          f"{row['fit_seconds']:.1f} s, read-out {row['readout_seconds']:.1f} s, peak GPU "
                          f"{_f(row['peak_gpu_mb'], '.0f')} MB", flush=True)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    row["error"] = str(e)[:4000]
                    print(f"[{name}] {tool}: {str(e).splitlines()[0]}", flush=True)
            res["rows"].append(row)
            save()
    save()
    print(write_markdown(res))
    return res


if __name__ == "__main__":
    main()
