"""Run velopyro and velovi 0.3.1 side by side and write tables and plots.

    python -m benchmarks.run_all            # full benchmark -> benchmarks/results/
    python -m benchmarks.run_all --quick    # smoke-sized version -> benchmarks/results/quick/

Sections (``--only`` picks some): ``pancreas`` (speed to convergence, held-out fit, CBDir / ICVCoh on one
shared UMAP), ``speed`` (s/epoch on a 3,000 x 1,000 scVelo simulation), ``truth`` (latent time, states,
rates, velocity sign against the ground truth of two simulators), ``scaling`` (s/epoch against genes and
cells), ``memory`` (peak RSS, one subprocess per run). Both models get the same arrays, batch size 256,
two torch threads, the same validation cells (velovi's split is imposed on velopyro) and the same
metric code.
"""

from __future__ import annotations

from benchmarks.common import set_threads

set_threads()  # before numpy/torch spin up their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import data, metrics  # noqa: E402
from benchmarks.common import BATCH_SIZE, N_THREADS, RESULTS_DIR, Stopwatch, layer_array, quiet  # noqa: E402
from benchmarks.memory import measure as measure_memory  # noqa: E402
from benchmarks.run_velopyro import VelopyroAdapter, _constructor_defaults, velopyro_available  # noqa: E402
from benchmarks.run_velovi import VeloviAdapter  # noqa: E402

PROFILES = {
    "full": {
        "pancreas": {"max_epochs": 500, "early_stopping": True},
        "n_samples": 25,
        "loglik_samples": 10,
        "speed": {"n_cells": 3000, "n_genes": 1000, "epochs": 10},
        "truth": {
            "scvelo": {"n_cells": 1000, "n_genes": 100, "max_epochs": 500, "early_stopping": True},
            "velopyro": {"n_cells": 1000, "n_genes": 100, "max_epochs": 500, "early_stopping": True},
        },
        "scaling": {
            "epochs": 3,
            "genes": {"n_cells": 3000, "values": [100, 500, 1000, 2000, 5000]},
            "cells": {"n_genes": 500, "values": [1000, 3000, 10000, 30000]},
        },
        "memory": {"n_genes": 500, "cells": [1000, 10000, 100000], "epochs": 1},
    },
    "quick": {
        "pancreas": {"max_epochs": 8, "early_stopping": False},
        "n_samples": 5,
        "loglik_samples": 3,
        "speed": {"n_cells": 3000, "n_genes": 1000, "epochs": 3},
        "truth": {
            "scvelo": {"n_cells": 500, "n_genes": 50, "max_epochs": 25, "early_stopping": False},
            "velopyro": {"n_cells": 500, "n_genes": 50, "max_epochs": 25, "early_stopping": False},
        },
        "scaling": {
            "epochs": 2,
            "genes": {"n_cells": 1000, "values": [100, 1000]},
            "cells": {"n_genes": 200, "values": [1000, 3000]},
        },
        "memory": {"n_genes": 500, "cells": [1000, 10000], "epochs": 1},
    },
}
SECTIONS = ("pancreas", "speed", "truth", "scaling", "memory")


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _jsonable(x):
    """Recursively turn numpy scalars/arrays into JSON types (arrays are dropped unless small)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not (isinstance(v, np.ndarray) and v.size > 64)}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "velopyro"], cwd=root, capture_output=True, text=True)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "pyro-ppl", "velovi", "scvi-tools", "scvelo", "lightning", "anndata", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["velopyro_commit"] = _git_commit()
    return out


def _make_adapters(args, n_samples: int) -> list:
    """velovi first: its validation split is then imposed on velopyro."""
    adapters = []
    if not args.skip_velovi:
        adapters.append(VeloviAdapter(n_samples=n_samples))
    if not args.skip_velopyro:
        if velopyro_available():
            fit_kwargs = {"jit": True} if args.jit else {}
            adapters.append(
                VelopyroAdapter(
                    n_samples=n_samples,
                    state_coupling=args.state_coupling,
                    pi_guide=args.pi_guide,
                    fit_kwargs=fit_kwargs,
                )
            )
        else:
            print("velopyro is not importable: only velovi runs")
    return adapters


def _short(adapter) -> str:
    return getattr(adapter, "key", None) or ("velovi" if adapter.name == "velovi" else "velopyro")


def _alternative_guide_adapter(args, n_samples: int):
    """velopyro with the other q(pi | z) than the one benchmarked, keyed ``velopyro_alt`` (evidence for the
    choice of the default; it is not part of the targets)."""
    if args.skip_velopyro or not velopyro_available():
        return None
    benchmarked = args.pi_guide or _constructor_defaults()["pi_guide"]
    other = "dirichlet" if benchmarked == "logistic_normal" else "logistic_normal"
    alt = VelopyroAdapter(n_samples=n_samples, state_coupling=args.state_coupling, pi_guide=other)
    alt.key = "velopyro_alt"
    return alt


def _ratio(a: dict, b: dict, key: str) -> float | None:
    """``a[key] / b[key]`` when both are present and finite."""
    x, y = a.get(key), b.get(key)
    if x is None or y is None or not np.isfinite(x) or not np.isfinite(y) or y == 0:
        return None
    return float(x / y)


def fit_and_score(
    adapter,
    adata,
    dataset: str,
    fit_cfg: dict,
    n_loglik: int,
    validation_indices=None,
    truth: data.GroundTruth | None = None,
    direction: bool = False,
) -> tuple[dict, dict]:
    """Fit one model and compute every metric that applies; returns (JSON row, arrays for plots)."""
    work = adata.copy()
    rec = adapter.fit(
        work,
        dataset,
        max_epochs=fit_cfg["max_epochs"],
        early_stopping=fit_cfg["early_stopping"],
        batch_size=BATCH_SIZE,
        validation_indices=validation_indices,
    )
    row = {"fit": rec.to_dict()}
    arrays = {"history": rec}
    with Stopwatch() as sw:
        v = adapter.velocity()
        lt = adapter.latent_time()
        sp = adapter.state_probs()
        rates = adapter.rates()
    row["output_seconds"] = sw.seconds
    val = adapter.validation_indices
    u, s = layer_array(adata, "Mu"), layer_array(adata, "Ms")
    with Stopwatch() as sw:
        ll = metrics.heldout_loglik(adapter.state_mean_draws(val, n_samples=n_loglik), u[val], s[val])
    row["heldout_loglik_per_cell"] = ll["mean_per_cell"]
    row["heldout_cells"] = ll["n_cells"]
    row["loglik_seconds"] = sw.seconds
    row["predicted_state_fractions"] = (np.bincount(sp.argmax(-1).ravel(), minlength=4) / sp[..., 0].size).tolist()
    arrays.update(velocity=v, latent_time=lt, state_probs=sp, rates=rates, validation_indices=val)
    scores, umap = _score_readout(adata, v, lt, sp, rates, truth, direction, f"velocity_{_short(adapter)}")
    row.update(scores)
    if umap is not None:
        arrays["velocity_umap"] = umap
    # other read-outs of the same fit (velopyro: states weighted by pi instead of p(k | data))
    for w in getattr(adapter, "alternative_readouts", ()):
        alt = adapter.velocity(w), adapter.latent_time(w), adapter.state_probs(w)
        row.setdefault("readouts", {})[w], _ = _score_readout(adata, *alt, rates, truth, direction,
                                                              f"velocity_{_short(adapter)}_{w}")
    return row, arrays


def _score_readout(adata, v, lt, sp, rates, truth, direction: bool, vkey: str) -> tuple[dict, np.ndarray | None]:
    """Ground-truth and direction scores of one read-out (velocity, latent time, state probabilities)."""
    row: dict = {}
    if truth is not None:
        lts = metrics.latent_time_scores(lt, truth.time, truth.cell_time)
        row["latent_time_spearman"] = {k: lts[k] for k in ("gene_median", "gene_mean", "cell")}
        if truth.state is not None:
            row["state_accuracy"] = metrics.state_accuracy(sp, truth.state)
        row["gamma_over_beta"] = metrics.rate_ratio_scores(rates["beta"], rates["gamma"], truth.ratio)
        if truth.velocity is not None:
            row["velocity"] = metrics.velocity_sign_accuracy(v, truth.velocity)
    umap = None
    if direction:
        v_clip = np.maximum(v, -layer_array(adata, "Ms"))  # velovi's default clip, applied identically to both
        with Stopwatch() as sw:
            d = metrics.direction_scores(adata, v_clip, lt, vkey=vkey)
        row["cbdir"] = d["cbdir"]
        row["icvcoh"] = d["icvcoh"]
        row["direction_seconds"] = sw.seconds
        umap = d["velocity_umap"]
    return row, umap


def _compare(rows: dict, val_sets: dict | None = None) -> dict:
    """velopyro / velovi ratios of speed measures, when both models ran.

    ``val_sets`` (model -> validation indices) adds whether both held out the same cells.
    """
    if "velovi" not in rows or "velopyro" not in rows:
        return {}
    a, b = rows["velopyro"].get("fit", {}), rows["velovi"].get("fit", {})
    extra = {}
    if val_sets and "velovi" in val_sets and "velopyro" in val_sets:
        x, y = (np.sort(np.asarray(val_sets[k])) for k in ("velovi", "velopyro"))
        extra["same_validation_cells"] = bool(np.array_equal(x, y))
    return extra | {
        "seconds_per_epoch_ratio": _ratio(a, b, "seconds_per_epoch"),
        "cpu_seconds_per_epoch_ratio": _ratio(a, b, "cpu_seconds_per_epoch"),
        "wall_seconds_ratio": _ratio(a, b, "wall_seconds"),
    }


# ---------------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------------


def section_pancreas(cfg: dict, args, plots: dict) -> dict:
    """Pancreas: fit to convergence, speed, held-out fit, CBDir and ICVCoh."""
    adata = data.pancreas()
    rows, arrays, val = {}, {}, None
    for adapter in _make_adapters(args, cfg["n_samples"]):
        key = _short(adapter)
        try:
            rows[key], arrays[key] = fit_and_score(
                adapter, adata, "pancreas", cfg["pancreas"], cfg["loglik_samples"], val, direction=True
            )
            rows[key]["name"] = adapter.name
            if val is None:
                val = adapter.validation_indices
        except Exception as e:  # noqa: BLE001 - record and carry on with the other model
            rows[key] = {"name": adapter.name, "error": f"{type(e).__name__}: {e}"[:500]}
            traceback.print_exc()
    plots["pancreas"] = (adata, arrays)
    vals = {k: a["validation_indices"] for k, a in arrays.items()}
    return {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "models": rows, "compare": _compare(rows, vals)}


def _speed_point(args, n_cells: int, n_genes: int, epochs: int) -> dict:
    adata = data.scvelo_simulation(n_cells, n_genes, block_size=25, with_truth=False)
    rows = {}
    for adapter in _make_adapters(args, 1):
        key = _short(adapter)
        try:
            rec = adapter.fit(adata.copy(), f"sim{n_cells}x{n_genes}", max_epochs=epochs, early_stopping=False)
            rows[key] = {"name": adapter.name, "fit": rec.to_dict()}
        except Exception as e:  # noqa: BLE001
            rows[key] = {"name": adapter.name, "error": f"{type(e).__name__}: {e}"[:500]}
            traceback.print_exc()
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "epochs": epochs,
        "models": rows,
        "compare": _compare(rows),
    }


def _speed_variants(adata, dataset: str, epochs: int) -> dict:
    """s/epoch of velovi and of every velopyro variant (state coupling x pi guide x JIT) on one data set."""
    out = {}
    adapters = [("velovi", VeloviAdapter(n_samples=1))]
    if velopyro_available():
        for coupling in ("independent", "shared"):
            for guide in ("logistic_normal", "dirichlet"):
                for jit in (False, True):
                    a = VelopyroAdapter(n_samples=1, state_coupling=coupling, pi_guide=guide,
                                        fit_kwargs={"jit": True} if jit else {})
                    adapters.append((f"{coupling},{guide}{',jit' if jit else ''}", a))
    for key, adapter in adapters:
        try:
            rec = adapter.fit(adata.copy(), dataset, max_epochs=epochs, early_stopping=False)
            out[key] = {"seconds_per_epoch": rec.seconds_per_epoch, "cpu_seconds_per_epoch": rec.cpu_seconds_per_epoch}
        except Exception as e:  # noqa: BLE001
            out[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
            traceback.print_exc()
    base = _get(out, "velovi", "seconds_per_epoch")
    for row in out.values():
        if base and row.get("seconds_per_epoch"):
            row["ratio_to_velovi"] = row["seconds_per_epoch"] / base
    return out


def section_speed(cfg: dict, args, plots: dict) -> dict:
    """Seconds per epoch on the 3,000 x 1,000 scVelo simulation, then every velopyro variant on it and on
    pancreas (state coupling x pi guide x JIT), each against velovi timed in the same section."""
    c = cfg["speed"]
    res = _speed_point(args, c["n_cells"], c["n_genes"], c["epochs"])
    if not args.skip_velovi and not args.skip_velopyro:
        res["variants"] = {"pancreas": _speed_variants(data.pancreas(), "pancreas", c["epochs"])}
        if not args.quick:  # the quick profile stays under 5 minutes
            sim = data.scvelo_simulation(c["n_cells"], c["n_genes"], block_size=25, with_truth=False)
            res["variants"][f"sim{c['n_cells']}x{c['n_genes']}"] = _speed_variants(sim, "sim", c["epochs"])
    return res


def section_truth(cfg: dict, args, plots: dict) -> dict:
    """Ground-truth recovery on scVelo's and velopyro's simulators."""
    out = {}
    plots["truth"] = {}
    for sim_name, c in cfg["truth"].items():
        if sim_name == "velopyro" and not data.velopyro_simulator_available():
            out[sim_name] = {"error": "velopyro.datasets.simulate not importable"}
            continue
        if sim_name == "scvelo":
            adata = data.scvelo_simulation(c["n_cells"], c["n_genes"])
        else:
            adata = data.velopyro_simulation(c["n_cells"], c["n_genes"])
        truth = data.ground_truth(adata)
        rows, arrays, val = {}, {}, None
        adapters = _make_adapters(args, cfg["n_samples"])
        alt = _alternative_guide_adapter(args, cfg["n_samples"])
        for adapter in adapters + ([alt] if alt is not None else []):
            key = _short(adapter)
            try:
                rows[key], arrays[key] = fit_and_score(
                    adapter, adata, f"{sim_name}_sim", c, cfg["loglik_samples"], val, truth=truth
                )
                rows[key]["name"] = adapter.name
                if val is None:
                    val = adapter.validation_indices
            except Exception as e:  # noqa: BLE001
                rows[key] = {"name": adapter.name, "error": f"{type(e).__name__}: {e}"[:500]}
                traceback.print_exc()
        out[sim_name] = {
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
            "models": rows,
            "compare": _compare(rows, {k: a["validation_indices"] for k, a in arrays.items()}),
        }
        plots["truth"][sim_name] = (truth, arrays)
    return out


def section_scaling(cfg: dict, args, plots: dict) -> dict:
    """Seconds per epoch against the number of genes and of cells."""
    c = cfg["scaling"]
    out = {"genes": [], "cells": []}
    for g in c["genes"]["values"]:
        out["genes"].append(_speed_point(args, c["genes"]["n_cells"], g, c["epochs"]))
    for n in c["cells"]["values"]:
        out["cells"].append(_speed_point(args, n, c["cells"]["n_genes"], c["epochs"]))
    return out


def section_memory(cfg: dict, args, plots: dict) -> dict:
    """Peak RSS per model and number of cells (fresh subprocess each)."""
    c = cfg["memory"]
    rows = []
    models = [m for m in ("velovi", "velopyro") if not getattr(args, f"skip_{m}")]
    if "velopyro" in models and not velopyro_available():
        models.remove("velopyro")
    for n in c["cells"]:
        for m in models:
            kw = {"state_coupling": args.state_coupling, "pi_guide": args.pi_guide} if m == "velopyro" else {}
            row = measure_memory(m, n, c["n_genes"], epochs=c["epochs"], **kw)
            print(f"  memory {m} {n} cells: {row.get('peak_rss_mb', float('nan')):.0f} MB", row.get("error", ""))
            rows.append(row)
    summary = {}
    for m in models:
        peak = {r["n_cells"]: r.get("peak_rss_mb") for r in rows if r["model"] == m and r.get("peak_rss_mb")}
        sizes = sorted(peak)
        # the training's own memory: peak minus the RSS once the AnnData (the input itself) is loaded
        extra = {r["n_cells"]: r["peak_rss_mb"] - r["rss_after_load_mb"] for r in rows
                 if r["model"] == m and r.get("peak_rss_mb") and r.get("rss_after_load_mb")}
        for lo, hi in zip(sizes[:-1], sizes[1:], strict=True):
            summary[f"{m}_peak_{hi // 1000}k_over_{lo // 1000}k"] = peak[hi] / peak[lo]
            if lo in extra and hi in extra:
                summary[f"{m}_training_{hi // 1000}k_over_{lo // 1000}k"] = extra[hi] / extra[lo]
    return {"rows": rows, "summary": summary}


# ---------------------------------------------------------------------------------------------------
# targets, markdown and plots
# ---------------------------------------------------------------------------------------------------


def _get(d: dict, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def evaluate_targets(res: dict) -> list[dict]:
    """The issue's targets, each with its measured value and pass / fail / n/a."""
    out = []

    def add(name, value, ok):
        out.append({"target": name, "value": value, "status": "n/a" if ok is None else ("pass" if ok else "FAIL")})

    for label, path in (("pancreas", ("pancreas",)), ("3,000 x 1,000 simulation", ("speed",))):
        r = _get(res, *path, "compare", "seconds_per_epoch_ratio")
        add(f"s/epoch velopyro/velovi <= 0.5 ({label})", r, None if r is None else r <= 0.5)
    m = _get(res, "memory", "summary", "velopyro_peak_100k_over_10k")
    add("velopyro peak RSS 100k / 10k <= 1.3", m, None if m is None else m <= 1.3)
    m = _get(res, "memory", "summary", "velopyro_training_100k_over_10k")
    add("velopyro training memory (peak - loaded data) 100k / 10k <= 1.3", m, None if m is None else m <= 1.3)

    def not_worse(name, *path, strict=False):
        a = _get(res, *path[:-1], "models", "velopyro", *path[-1])
        b = _get(res, *path[:-1], "models", "velovi", *path[-1])
        if a is None or b is None:
            add(name, None, None)
        else:
            add(name, {"velopyro": a, "velovi": b}, a > b if strict else a >= b)

    not_worse("pancreas CBDir mean", "pancreas", ("cbdir", "mean"))
    not_worse("pancreas ICVCoh mean", "pancreas", ("icvcoh", "mean"))
    not_worse("pancreas held-out log-lik per cell", "pancreas", ("heldout_loglik_per_cell",))
    for sim in ("scvelo", "velopyro"):
        not_worse(
            f"{sim} sim latent time Spearman (gene median), better",
            "truth",
            sim,
            ("latent_time_spearman", "gene_median"),
            strict=True,
        )
        not_worse(f"{sim} sim state accuracy (4 states)", "truth", sim, ("state_accuracy", "four_state"))
        not_worse(f"{sim} sim velocity sign accuracy", "truth", sim, ("velocity", "sign_accuracy"))
        not_worse(f"{sim} sim velocity Pearson (gene median)", "truth", sim, ("velocity", "gene_pearson_median"))
        not_worse(f"{sim} sim gamma/beta Spearman", "truth", sim, ("gamma_over_beta", "spearman"))
        not_worse(f"{sim} sim held-out log-lik per cell", "truth", sim, ("heldout_loglik_per_cell",))
    return out


def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not np.isfinite(x):
            return "-"
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:.0f}"
    if isinstance(x, dict):
        return ", ".join(f"{k} {_fmt(v, nd)}" for k, v in x.items())
    return str(x)


def _model_table(rows: dict, fields: list[tuple[str, tuple]]) -> list[str]:
    names = [k for k in ("velovi", "velopyro") if k in rows] + [k for k in rows if k not in ("velovi", "velopyro")]
    lines = ["| measure | " + " | ".join(rows[k].get("name", k) for k in names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    errors = [f"{rows[k].get('name', k)}: {rows[k]['error']}" for k in names if "error" in rows[k]]
    for label, path in fields:
        lines.append(f"| {label} | " + " | ".join(_fmt(_get(rows[k], *path)) for k in names) + " |")
    return lines + [f"\n**error** {e}" for e in errors]


FIT_FIELDS = [
    ("epochs run", ("fit", "n_epochs")),
    ("s / epoch (median)", ("fit", "seconds_per_epoch")),
    ("CPU s / epoch (all threads)", ("fit", "cpu_seconds_per_epoch")),
    ("training wall time (s)", ("fit", "wall_seconds")),
    ("stopped early", ("fit", "stopped_early")),
    ("best epoch (own validation loss)", ("fit", "best_epoch")),
    ("held-out log-lik / cell", ("heldout_loglik_per_cell",)),
    ("output extraction (s)", ("output_seconds",)),
]


def write_markdown(res: dict, path: Path) -> None:
    """Human-readable tables of everything in ``res``."""
    meta = res["meta"]
    L = [f"# velopyro vs velovi {meta['versions'].get('velovi')} ({meta['profile']} profile)", ""]
    L.append(
        f"{meta['started']} on {meta['machine']}, {N_THREADS} torch threads "
        f"(OMP_WAIT_POLICY={meta.get('omp_wait_policy')}), batch {BATCH_SIZE}; "
        f"total {meta['total_seconds']:.0f} s; commit {meta['versions'].get('velopyro_commit')}."
    )
    if meta.get("contended"):
        L.append(
            f"\n**Warning: the machine was busy (1-min load average up to {meta['max_load']} on "
            f"{os.cpu_count()} cores), so the timings are inflated and noisy.**"
        )
    L += ["", "## Targets", "", "| target | value | status |", "|---|---|---|"]
    for t in res.get("targets", []):
        L.append(f"| {t['target']} | {_fmt(t['value'])} | {t['status']} |")
    if "pancreas" in res:
        p = res["pancreas"]
        L += ["", f"## Pancreas ({p.get('n_cells')} cells x {p.get('n_genes')} genes)", ""]
        fields = FIT_FIELDS + [("CBDir mean", ("cbdir", "mean")), ("ICVCoh mean", ("icvcoh", "mean"))]
        names = [k for k in ("velovi", "velopyro") if k in p["models"]]
        transitions = next(
            (list(p["models"][k]["cbdir"]["per_transition"]) for k in names if "cbdir" in p["models"][k]), []
        )
        fields += [(f"CBDir {t}", ("cbdir", "per_transition", t)) for t in transitions]
        L += _model_table(p["models"], fields)
        L += ["", f"velopyro / velovi: {_fmt(p.get('compare'))}"]
    if "speed" in res:
        s = res["speed"]
        L += ["", f"## Speed, scVelo simulation {s['n_cells']} x {s['n_genes']} ({s['epochs']} epochs)", ""]
        L += _model_table(s["models"], FIT_FIELDS[:4]) + ["", f"velopyro / velovi: {_fmt(s.get('compare'))}"]
        if s.get("variants"):
            names = list(s["variants"])
            L += ["", f"### Variants, s / epoch ({s['epochs']} epochs each; ratio to velovi in the same section)", ""]
            L += ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            keys = list(dict.fromkeys(k for v in s["variants"].values() for k in v))
            for k in keys:
                cells = []
                for n in names:
                    r = s["variants"][n].get(k, {})
                    cells.append(r.get("error", "")[:40] if "error" in r else
                                 f"{_fmt(r.get('seconds_per_epoch'))} ({_fmt(r.get('ratio_to_velovi'))})")
                L.append(f"| {k} | " + " | ".join(cells) + " |")
            L += ["", "JIT drops the ragged last minibatch (static shapes): 12 of 13 minibatches per epoch on "
                  "pancreas."]
    for sim, t in res.get("truth", {}).items():
        L += ["", f"## Ground truth: {sim} simulator ({t.get('n_cells')} x {t.get('n_genes')})", ""]
        if "error" in t:
            L.append(f"not run: {t['error']}")
            continue
        fields = FIT_FIELDS[:4] + [
            ("held-out log-lik / cell", ("heldout_loglik_per_cell",)),
            ("latent time Spearman, gene median", ("latent_time_spearman", "gene_median")),
            ("latent time Spearman, cell level", ("latent_time_spearman", "cell")),
            ("state accuracy (4 states)", ("state_accuracy", "four_state")),
            ("state accuracy (induction vs repression)", ("state_accuracy", "induction_vs_repression")),
            ("gamma/beta Spearman", ("gamma_over_beta", "spearman")),
            ("gamma/beta Pearson (log)", ("gamma_over_beta", "pearson_log")),
            ("velocity sign accuracy", ("velocity", "sign_accuracy")),
            ("velocity Pearson (gene median)", ("velocity", "gene_pearson_median")),
        ]
        L += _model_table(t["models"], fields)
    if "scaling" in res:
        L += [
            "",
            "## Scaling (s / epoch)",
            "",
            "| sweep | cells | genes | velovi | velopyro | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for kind in ("genes", "cells"):
            for r in res["scaling"][kind]:
                spe = {k: _get(r["models"], k, "fit", "seconds_per_epoch") for k in ("velovi", "velopyro")}
                L.append(
                    f"| {kind} | {r['n_cells']} | {r['n_genes']} | {_fmt(spe['velovi'])} | {_fmt(spe['velopyro'])} | "
                    f"{_fmt(r['compare'].get('seconds_per_epoch_ratio'))} |"
                )
    if "memory" in res:
        L += ["", "## Memory (peak RSS, MB; one subprocess per run)", ""]
        L += ["| model | cells | genes | after import | after data load | peak | s/epoch | error |"]
        L += ["|---|---|---|---|---|---|---|---|"]
        for r in res["memory"]["rows"]:
            L.append(
                f"| {r['model']} | {r['n_cells']} | {r['n_genes']} | "
                f"{_fmt(r.get('rss_after_import_mb'), 4)} | {_fmt(r.get('rss_after_load_mb'), 4)} | "
                f"{_fmt(r.get('peak_rss_mb'), 4)} | "
                f"{_fmt(r.get('seconds_per_epoch'))} | {r.get('error', '')} |"
            )
        L += ["", f"{_fmt(res['memory'].get('summary'))}"]
    L += _readout_table(res)
    for name, err in res.get("errors", {}).items():
        L += ["", f"**section {name} failed**: {err}"]
    path.write_text("\n".join(L) + "\n")


READOUT_FIELDS = [
    ("CBDir mean", ("cbdir", "mean")),
    ("ICVCoh mean", ("icvcoh", "mean")),
    ("latent time Spearman, gene median", ("latent_time_spearman", "gene_median")),
    ("latent time Spearman, cell level", ("latent_time_spearman", "cell")),
    ("state accuracy (4 states)", ("state_accuracy", "four_state")),
    ("velocity sign accuracy", ("velocity", "sign_accuracy")),
    ("velocity Pearson (gene median)", ("velocity", "gene_pearson_median")),
]


def _readout_table(res: dict) -> list[str]:
    """velopyro's outputs with every state weighting it offers (``readouts``), same fits, and velovi's."""
    sections = [("pancreas", res.get("pancreas"))] + [(f"{k} sim", v) for k, v in res.get("truth", {}).items()]
    rows, weights = [], []
    for label, sec in sections:
        for model in ("velopyro", "velopyro_alt"):
            readouts = (sec or {}).get("models", {}).get(model, {}).get("readouts", {})
            weights = weights or list(readouts)
            for name, path in READOUT_FIELDS:
                vals = [_get(readouts.get(w, {}), *path) for w in weights]
                if any(v is not None for v in vals):
                    c = _get(sec, "models", "velovi", *path)
                    rows.append(f"| {label} | {model} | {name} | " + " | ".join(map(_fmt, vals)) + f" | {_fmt(c)} |")
    if not rows:
        return []
    return ["", "## velopyro read-outs: the states weighted by p(k | data) or by pi, same fits", "",
            "velopyro's default: velocity by pi, latent time and states by p(k | data).", "",
            "| data | model | measure | " + " | ".join(weights) + " | velovi |",
            "|---|---|---|" + "---|" * (len(weights) + 1), *rows, ""]


def make_plots(res: dict, plots: dict, out: Path) -> list[str]:
    """Training curves, scaling, memory, CBDir bars, velocity streams, latent time vs truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    for name, fn in (
        ("pancreas", _plot_pancreas),
        ("truth", _plot_truth),
        ("scaling", _plot_scaling),
        ("memory", _plot_memory),
    ):
        try:
            fn(res, plots, plt, save)
        except Exception:  # noqa: BLE001 - a failed figure must not lose the tables
            print(f"plot {name} failed:")
            traceback.print_exc()
    return written


def _plot_pancreas(res: dict, plots: dict, plt, save) -> None:
    """Training curves, velocity arrows on the shared UMAP, CBDir per transition."""
    if "pancreas" in plots:
        adata, arrays = plots["pancreas"]
        if arrays:
            fig, axes = plt.subplots(1, len(arrays), figsize=(5 * len(arrays), 3.6), squeeze=False)
            for ax, (k, a) in zip(axes[0], arrays.items(), strict=False):
                rec = a["history"]
                t = np.cumsum(rec.epoch_seconds)
                for label, y in (("validation", rec.validation_loss), ("train", rec.train_loss)):
                    n = min(len(t), len(y))
                    if n:
                        ax.plot(t[:n], y[:n], label=label)
                ax.set(title=f"{k}: own objective per cell", xlabel="wall time (s)", ylabel="loss")
                ax.legend()
            save(fig, "pancreas_training.png")
            with_emb = {k: a for k, a in arrays.items() if "velocity_umap" in a}
            if with_emb:
                labels = adata.obs["clusters"].astype("category")
                x = adata.obsm["X_umap"]
                fig, axes = plt.subplots(1, len(with_emb), figsize=(6 * len(with_emb), 5.5), squeeze=False)
                for ax, (k, a) in zip(axes[0], with_emb.items(), strict=False):
                    for ci, c in enumerate(labels.cat.categories):
                        sel = (labels == c).to_numpy()
                        ax.scatter(x[sel, 0], x[sel, 1], s=3, color=plt.cm.tab10(ci % 10), label=c)
                    step = max(1, adata.n_obs // 800)
                    v = a["velocity_umap"]
                    ax.quiver(x[::step, 0], x[::step, 1], v[::step, 0], v[::step, 1], angles="xy", width=0.002)
                    cb = _get(res, "pancreas", "models", k, "cbdir", "mean")
                    ax.set(title=f"{k}  CBDir {_fmt(cb)}", xticks=[], yticks=[])
                axes[0][0].legend(markerscale=3, fontsize=7, loc="best")
                save(fig, "pancreas_velocity_umap.png")
        models = _get(res, "pancreas", "models") or {}
        cb = {k: m["cbdir"]["per_transition"] for k, m in models.items() if "cbdir" in m}
        if cb:
            names = list(next(iter(cb.values())))
            fig, ax = plt.subplots(figsize=(9, 3.8))
            w = 0.8 / len(cb)
            for i, (k, d) in enumerate(cb.items()):
                ax.bar(np.arange(len(names)) + i * w, [d[n] for n in names], width=w, label=k)
            ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names, rotation=25, ha="right", fontsize=8)
            ax.axhline(0, color="k", lw=0.5)
            ax.set(ylabel="CBDir", title="pancreas cross-boundary direction correctness")
            ax.legend()
            save(fig, "pancreas_cbdir.png")


def _plot_truth(res: dict, plots: dict, plt, save) -> None:
    """Cell-level latent time against the true time, per simulator and model."""
    for sim, (truth, arrays) in plots.get("truth", {}).items():
        if not arrays:
            continue
        fig, axes = plt.subplots(1, len(arrays), figsize=(4.5 * len(arrays), 4), squeeze=False)
        for ax, (k, a) in zip(axes[0], arrays.items(), strict=False):
            lt = a["latent_time"]
            gmax = lt.max(axis=0)
            cell = (lt / np.where(gmax > 0, gmax, 1)).mean(axis=1)
            ax.scatter(truth.cell_time, cell, s=3)
            rho = _get(res, "truth", sim, "models", k, "latent_time_spearman", "cell")
            ax.set(title=f"{k} (Spearman {_fmt(rho)})", xlabel="true time", ylabel="mean scaled latent time")
        save(fig, f"truth_{sim}_latent_time.png")


def _plot_scaling(res: dict, plots: dict, plt, save) -> None:
    """Seconds per epoch against genes and cells (log-log)."""
    if "scaling" in res:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, kind, other in ((axes[0], "genes", "n_cells"), (axes[1], "cells", "n_genes")):
            pts = res["scaling"][kind]
            if not pts:
                continue
            xkey = "n_genes" if kind == "genes" else "n_cells"
            for m in ("velovi", "velopyro"):
                xy = [(p[xkey], _get(p, "models", m, "fit", "seconds_per_epoch")) for p in pts]
                xy = [(x, y) for x, y in xy if y is not None and np.isfinite(y)]
                if xy:
                    ax.plot(*zip(*xy, strict=True), "o-", label=m)
            ax.set(
                xscale="log",
                yscale="log",
                xlabel=xkey,
                ylabel="s / epoch",
                title=f"{other} = {pts[0][other]}",
            )
            ax.legend()
        save(fig, "scaling.png")


def _plot_memory(res: dict, plots: dict, plt, save) -> None:
    """Peak RSS and RSS after loading the data, against cells."""
    if "memory" in res and res["memory"]["rows"]:
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in ("velovi", "velopyro"):
            rows = [r for r in res["memory"]["rows"] if r["model"] == m and r.get("peak_rss_mb")]
            if rows:
                ax.plot([r["n_cells"] for r in rows], [r["peak_rss_mb"] for r in rows], "o-", label=f"{m} peak")
                ax.plot(
                    [r["n_cells"] for r in rows],
                    [r["rss_after_load_mb"] for r in rows],
                    "x--",
                    label=f"{m} data loaded",
                )
        ax.set(xscale="log", xlabel="cells (500 genes)", ylabel="RSS (MB)", title="memory")
        ax.legend(fontsize=8)
        save(fig, "memory.png")


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------


def _finish(res: dict, loads: list, t0: float, out: Path) -> None:
    """Update totals and targets, then write ``results.json`` and ``results.md``."""
    res["meta"]["total_seconds"] = time.perf_counter() - t0
    res["meta"]["max_load"] = max(x[0] for x in loads)
    res["meta"]["contended"] = res["meta"]["max_load"] > N_THREADS + 0.5
    res["targets"] = evaluate_targets(res)
    (out / "results.json").write_text(json.dumps(_jsonable(res), indent=1))
    write_markdown(res, out / "results.md")


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; returns the results dictionary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few epochs (< 5 min)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default results/ or results/quick/)")
    parser.add_argument("--skip-velovi", action="store_true")
    parser.add_argument("--skip-velopyro", action="store_true")
    parser.add_argument("--state-coupling", default=None, help="velopyro state_coupling (default: velopyro's)")
    parser.add_argument("--pi-guide", default=None, help="velopyro pi_guide (default: velopyro's)")
    parser.add_argument("--jit", action="store_true", help="fit velopyro with jit=True")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the pancreas/truth epoch cap")
    args = parser.parse_args(argv)

    quiet()
    profile = "quick" if args.quick else "full"
    cfg = json.loads(json.dumps(PROFILES[profile]))
    if args.max_epochs is not None:
        cfg["pancreas"]["max_epochs"] = args.max_epochs
        for c in cfg["truth"].values():
            c["max_epochs"] = args.max_epochs
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    loads = [_load()]
    res = {
        "meta": {
            "profile": profile,
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "threads": N_THREADS,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "batch_size": BATCH_SIZE,
            "config": cfg,
            "velopyro_args": {
                "state_coupling": args.state_coupling,
                "pi_guide": args.pi_guide,
                "jit": args.jit,
            },
            "versions": _versions(),
            "section_seconds": {},
            "load_average": {},
        },
        "errors": {},
    }
    plots: dict = {}
    for name in SECTIONS:
        if name not in args.only:
            continue
        print(f"== {name} (load {_load()})", flush=True)
        ts = time.perf_counter()
        try:
            res[name] = globals()[f"section_{name}"](cfg, args, plots)
        except Exception as e:  # noqa: BLE001 - keep the other sections
            res["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc()
        res["meta"]["section_seconds"][name] = time.perf_counter() - ts
        loads.append(_load())
        res["meta"]["load_average"][name] = loads[-1]
        print(f"   {name}: {res['meta']['section_seconds'][name]:.0f} s", flush=True)
        _finish(res, loads, t0, out)  # keep what is done so far if a later section dies
    _finish(res, loads, t0, out)
    res["meta"]["plots"] = make_plots(res, plots, out)
    _finish(res, loads, t0, out)
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(res['meta']['plots'])} plots "
        f"in {res['meta']['total_seconds']:.0f} s"
    )
    return res


if __name__ == "__main__":
    main()
