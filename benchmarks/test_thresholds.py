"""The distribution behind each test threshold on a fitted model's quality (issue 25, item 1).

Every test that asserts a threshold on a fit (a correlation, accuracy, AUC, KS distance, ...) reads it off one
fit: one seed, one thread count, one machine. This script re-runs each such test fixture's fit, through the
test module's own builder and metric functions (imported, not copied), over fit seeds and torch thread
counts, and reports min / mean / max of each asserted quantity beside the test's threshold::

    python -m benchmarks.test_thresholds list
    python -m benchmarks.test_thresholds run [--only NAME ...] [--seeds 0 1 ...] [--threads 1 2] [--force]
    python -m benchmarks.test_thresholds report

``run`` starts one subprocess per (fixture, seed, threads), with ``OMP_NUM_THREADS`` and
``VELOPYRO_TEST_THREADS`` set to the thread count (the fixtures that pin a thread count read the latter:
``tests/_fixtures.py``), and writes one JSON row to ``benchmarks/results/test_thresholds/runs/``; rows that
exist are kept unless ``--force`` (a run can be resumed). ``report`` writes
``benchmarks/results/test_thresholds/results.md`` from every row there. The default is seeds 0-9 on 1 and 2
threads (20 fits per fixture; the CPU cost is that of the test's fixture times 20, the scVelo and CellRank
fixtures' converged fits the dearest).

A threshold is justified when it sits clearly on the safe side of the worst value seen; the seed the test
itself uses is seed 0 (the data's seeds stay the test's: only the fit's seed varies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TESTS = REPO / "tests"
OUT_DIR = BENCH_DIR / "results" / "test_thresholds"
RUNS_DIR = OUT_DIR / "runs"


@dataclass
class Check:
    """One assertion: ``metric`` (a key of the case's measured dict) ``op`` ``threshold``."""

    metric: str
    op: str  # ">", ">=", "<", "<="; "report": measured and shown, not asserted by the test
    threshold: float
    assertion: str  # the test's assertion, as written there

    def passes(self, value: float) -> bool:
        if self.op == "report":
            return True
        if value is None or not np.isfinite(value):
            return False
        return {">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
                "<=": value <= self.threshold}[self.op]


@dataclass
class Case:
    """A test fixture's fit and the quantities its tests assert on."""

    name: str
    tests: str  # test ids
    fixture: str  # the fixture and its fit, in words
    measure: Callable[[int], dict[str, float]]  # fit seed -> {metric: value}
    checks: list[Check] = field(default_factory=list)


def _import(module: str):
    """A test module, imported from tests/ (on sys.path, as pytest puts it)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import importlib

    return importlib.import_module(module)


# ---- the cases: each measure() builds the fixture through the test module and computes its metrics ------------

def _api(seed: int) -> dict[str, float]:
    t = _import("test_api")
    sim = t.build_sim()
    return t.recovery_metrics(sim, t.build_fitted(sim, seed=seed))


def _backward(seed: int) -> dict[str, float]:
    t = _import("test_backward_genes")
    m = t.separation_metrics(t.build_corrupted_fit(seed=seed))
    m["clean_finite"] = float(m["clean_finite"])
    return m


def _convert_loo(seed: int) -> dict[str, float]:
    m = _import("test_convert").loo_metrics(fit_seed=seed)
    return {"p_loo_share": m["p_loo_share"], "share_k_above_0.7": m["share_k_above_0.7"]}


def _convert_compare(seed: int) -> dict[str, float]:
    cmp = _import("test_convert").compare_metrics(fit_seed=seed)
    return {"nb_ranked_first": float(cmp.index[0] == "negative_binomial"),
            "elpd_diff_over_dse": float(cmp["elpd_diff"].iloc[1] / cmp["dse"].iloc[1])}


def _covariates(seed: int) -> dict[str, float]:
    r = _import("test_covariates").build_recovery(fit_seed=seed)
    one, fixed, naive = r["one_batch"], r["batch_key"], r["no_key"]
    return {"batch_key_time_minus_one_batch": fixed["time"] - one["time"],
            "batch_key_velocity_minus_one_batch": fixed["velocity"] - one["velocity"],
            "batch_key_mixing": fixed["mixing"],
            "no_key_largest_drop": max(one["time"] - naive["time"], one["velocity"] - naive["velocity"]),
            "no_key_mixing": naive["mixing"]}


def _kinetics(seed: int) -> dict[str, float]:
    t = _import("test_kinetics_model")
    sim = t.build_td_sim()
    model = t.build_td_model(sim)
    t.fit_td_model(model, seed=seed)
    return {k: float(v) for k, v in t._recovery(model, sim).items()}


def _ppc_time(likelihood: str) -> Callable[[int], dict[str, float]]:
    def measure(seed: int) -> dict[str, float]:
        return _import("test_ppc").latent_time_metrics(likelihood, fit_seed=seed)
    return measure


def _ppc_pit_counts(seed: int) -> dict[str, float]:
    m = _import("test_ppc").pit_count_metrics(fit_seed=seed)
    return {"max_ks_nb": max(m["ks_nb"]), "min_ks_po_minus_max_ks_nb": min(m["ks_po"]) - max(m["ks_nb"]),
            "abs_tail_nb_minus_0.2": abs(m["tail_nb"] - 0.2), "tail_po": m["tail_po"]}


def _ppc_pit_normal(seed: int) -> dict[str, float]:
    m = _import("test_ppc").pit_normal_metrics(fit_seed=seed)
    return {"max_ks": max(m["ks"]), "tail": m["tail"], "min_ks_bad_minus_max_ks": min(m["ks_bad"]) - max(m["ks"]),
            "tail_bad": m["tail_bad"]}


def _scvelo(seed: int) -> dict[str, float]:
    t = _import("test_scvelo_compat")
    scv, adata = t.build_scvelo_ready(seed=seed)
    m = {k: float(v) for k, v in t.dynamical_metrics(scv, adata).items()}
    dk = t.differential_kinetics_metrics(scv, adata)
    m.update({"dkt_finite_share": dk["finite_share"], "dkt_share_p_below_0.01": dk["share_p_below_0.01"]})
    return m


def _uncertainty_shuffled(seed: int) -> dict[str, float]:
    t = _import("test_uncertainty")
    m = t.shuffled_type_metrics(t.build_shuffled_type_fit(seed=seed))
    return {"auc": m["auc"], "median_b_over_min_median_other": m["median_b"] / m["min_median_other"]}


def _uncertainty_steady(seed: int) -> dict[str, float]:
    t = _import("test_uncertainty")
    return t.steady_type_metrics(t.build_steady_type_fit(seed=seed))


def _cellrank(seed: int) -> dict[str, float]:
    """test_cellrank's assertions on the fixture (the tests compute them inline; only the fit is shared)."""
    from scipy.stats import spearmanr

    t = _import("test_cellrank")
    cr, adata = t.build_cellrank_ready(seed=seed)
    tt = adata.obs["true_t"].to_numpy()
    vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
    ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
    kernel = 0.8 * vk + 0.2 * ck
    step = np.asarray(kernel.transition_matrix @ tt).ravel() - tt
    g = cr.estimators.GPCCA(kernel)
    g.compute_schur(n_components=6)
    g.compute_macrostates(n_states=2, cluster_key=None)
    g.predict_terminal_states(method="top_n", n_states=1)
    g.predict_initial_states(n_states=1)
    term = adata.obs["term_states_fwd"].notna().to_numpy()
    init = adata.obs["init_states_fwd"].notna().to_numpy()
    name = adata.obs["term_states_fwd"].cat.categories[0]
    memb = np.asarray(g.macrostates_memberships[name]).ravel()
    mc = t.velopyro.tl.cellrank_velocity_kernel(adata)
    mc.compute_transition_matrix(model="monte_carlo", n_samples=20, seed=0, softmax_scale=4.0)
    mc_step = np.asarray(mc.transition_matrix @ tt).ravel() - tt
    return {"forward_step_share": float(np.mean(step > 0)),
            "init_median_t_minus_p25": float(np.median(tt[init]) - np.percentile(tt, 25)),
            "term_median_t_minus_median": float(np.median(tt[term]) - np.median(tt)),
            "terminal_membership_spearman": float(spearmanr(memb, tt)[0]),
            "monte_carlo_forward_step_share": float(np.mean(mc_step > 0))}


def _lightning_ddp(seed: int) -> dict[str, float]:
    t = _import("test_lightning")
    sim = t.build_sim()
    m = t.ddp_curve_metrics(sim, t.build_ddp(sim, seed=seed), seed=seed)
    return {"max_ddp_gap_over_noise": float(np.abs(m["ddp_curve"] - m["one_curve"]).max() / m["noise"]),
            "fall_over_noise": float((m["one_curve"][0] - m["one_curve"][-1]) / m["noise"])}


def _state_head(seed: int) -> dict[str, float]:
    t = _import("test_collapsed")
    return t.state_head_metrics(t.build_state_head_fit(seed=seed))


def _lightning_early_stopping(seed: int) -> dict[str, float]:
    t = _import("test_lightning")
    h = t.early_stopping_history(t.build_sim(), seed=seed)
    return {"stopped_early": float(h["stopped_early"] and len(h["epoch"]) < 40), "best_epoch": float(h["best_epoch"])}


CASES: dict[str, Case] = {c.name: c for c in [
    Case("api_fitted", "test_api.py::test_recovers_latent_time_and_states",
         "fitted: simulate(500 x 30, seed 1), independent coupling, 150 epochs, batch 128 (process threads)", _api,
         [Check("gene_time_median_spearman", ">", 0.6, "np.nanmedian(rho) > 0.6"),
          Check("cell_time_spearman", ">", 0.8, "spearmanr(cell, true_t) > 0.8"),
          Check("state_accuracy", ">", 0.6, "acc > 0.6"),
          Check("gamma_beta_spearman", ">", 0.8, "spearmanr(gamma / beta, truth) > 0.8"),
          Check("velocity_sign_accuracy", ">", 0.7, "sign agreement > 0.7")]),
    Case("backward_genes", "test_backward_genes.py::test_reversed_and_shuffled_genes_are_separated",
         "corrupted_fit: simulate(400 x 30, seed 1), genes 0-4 reversed, 5-9 shuffled, 60 epochs, "
         "rate_init='select'", _backward,
         [Check("auc_reversed", ">=", 0.9, "auc_rev >= 0.9"), Check("auc_all", ">=", 0.9, "auc_all >= 0.9"),
          Check("backward_share_reversed", ">=", 0.8, "fit_backward[rev].mean() >= 0.8"),
          Check("backward_share_clean", "<=", 0.1, "fit_backward[clean].mean() <= 0.1")]),
    Case("cellrank", "test_cellrank.py::test_cellrank_terminal_states_and_fates, "
         "::test_cellrank_monte_carlo_with_posterior_variance",
         "cellrank_ready: simulate(600 x 20, seed 0), true_t < 12, 1000 epochs (early stopping), needs cellrank",
         _cellrank,
         [Check("forward_step_share", ">", 0.6, "np.mean(step > 0) > 0.6"),
          Check("init_median_t_minus_p25", "<", 0.0, "median(t[init]) < percentile(t, 25)"),
          Check("term_median_t_minus_median", ">", 0.0, "median(t[term]) > median(t)"),
          Check("terminal_membership_spearman", ">", 0.5, "spearmanr(membership, t) > 0.5"),
          Check("monte_carlo_forward_step_share", ">", 0.6, "np.mean(step > 0) > 0.6 (Monte Carlo)")]),
    Case("convert_loo", "test_convert.py::test_loo_runs_on_a_well_specified_fit_and_reports_pareto_k",
         "test_ppc.fit_model(NB data, NB fit): 500 x 30, 100 epochs, no early stopping (pinned threads)",
         _convert_loo,
         [Check("p_loo_share", "<", 0.1, "0 < p_loo < 0.1 * n_pairs"),
          Check("share_k_above_0.7", "<", 0.25, "np.mean(k_pair > 0.7) < 0.25")]),
    Case("convert_compare", "test_convert.py::test_compare_prefers_the_true_likelihood",
         "test_ppc.fit_model(NB data, NB and Poisson fits)", _convert_compare,
         [Check("nb_ranked_first", ">=", 1.0, "cmp.index[0] == 'negative_binomial'"),
          Check("elpd_diff_over_dse", ">", 4.0, "elpd_diff > 4 * dse")]),
    Case("covariates_recovery", "test_covariates.py::test_batch_key_returns_to_the_one_batch_level, "
         "::test_without_batch_key_the_batches_stay_apart",
         "recovery: simulate(400 x 20, seed 2) with 1 and 2 batches, 3 fits of 120 epochs (pinned threads)",
         _covariates,
         [Check("batch_key_time_minus_one_batch", ">=", -_import("test_covariates").TIME_MARGIN,
                "fixed['time'] >= one['time'] - TIME_MARGIN"),
          Check("batch_key_velocity_minus_one_batch", ">=", -0.02, "fixed['velocity'] >= one['velocity'] - 0.02"),
          Check("batch_key_mixing", ">", 0.7, "fixed['mixing'] > 0.7"),
          Check("no_key_largest_drop", ">", 0.02, "naive time or velocity < one's - 0.02"),
          Check("no_key_mixing", "<", 0.3, "naive['mixing'] < 0.3")]),
    Case("kinetics_time_dependent", "test_kinetics_model.py::test_time_dependent_recovers_its_simulators_truth",
         "simulate(500 x 30, seed 0, time-dependent kinetics), rate_init='constant', 150 epochs", _kinetics,
         [Check(k, ">", v, f"got[{k!r}] > {v}") for k, v in
          _import("test_kinetics_model").RECOVERY.items()]),
    *[Case(f"ppc_latent_time_{lik}", f"test_ppc.py::test_fit_recovers_latent_time_with_each_likelihood[{lik}]",
           f"test_ppc.fit_model({lik}, {lik}): 500 x 30, 100 epochs (pinned threads)", _ppc_time(lik),
           [Check("cell_time_spearman", ">", v, f"rho_cell > {v} (LATENT_TIME_MIN)")])
      for lik, v in _import("test_ppc").LATENT_TIME_MIN.items()],
    Case("ppc_pit_counts", "test_ppc.py::test_pit_is_calibrated_when_well_specified_and_detects_overdispersion",
         "test_ppc.fit_model(NB data, NB and Poisson fits)", _ppc_pit_counts,
         [Check("max_ks_nb", "<", 0.08, "max(ks_nb) < 0.08"),
          Check("min_ks_po_minus_max_ks_nb", ">", 0.02, "min(ks_po) > max(ks_nb) + 0.02"),
          Check("abs_tail_nb_minus_0.2", "<", 0.04, "abs(tail_share(nb) - 0.2) < 0.04"),
          Check("tail_po", ">", 0.28, "tail_share(po) > 0.28")]),
    Case("ppc_pit_normal", "test_ppc.py::test_pit_of_the_normal_fit_is_close_to_uniform",
         "test_ppc.fit_model(normal, normal)", _ppc_pit_normal,
         [Check("max_ks", "<", 0.15, "max(ks) < 0.15"), Check("tail", "<", 0.25, "tail_share(p) < 0.25"),
          Check("min_ks_bad_minus_max_ks", ">", 0.05, "min(ks_bad) > max(ks) + 0.05"),
          Check("tail_bad", ">", 0.4, "tail_share(p_bad) > 0.4")]),
    Case("scvelo_compat", "test_scvelo_compat.py::test_scvelo_dynamical_tools_run_and_are_sane, "
         "::test_scvelo_differential_kinetic_test_on_velopyro_kinetics",
         "scvelo_ready: simulate(600 x 20, seed 0), true_t < 12, 1000 epochs (early stopping; pinned threads)",
         _scvelo,
         [Check("root_cells_max", ">", 0.99, "root_cells.max() > 0.99"),
          Check("root_cells_spearman", "<", -0.5, "spearmanr(root_cells, t) < -0.5"),
          Check("end_points_spearman", ">", -0.25, "spearmanr(end_points, t) > -0.25"),
          Check("velocity_pseudotime_spearman", "report", float("nan"), "reported, not asserted (bimodal over fits)"),
          Check("latent_time_spearman", ">", 0.6, "spearmanr(latent_time, t) > 0.6"),
          Check("dkt_finite_share", ">", 0.9, "finite.size > 0.9 * p.size"),
          Check("dkt_share_p_below_0.01", "<", 0.1, "np.mean(finite < 1e-2) < 0.1")]),
    Case("uncertainty_shuffled_type", "test_uncertainty.py::test_permutation_score_finds_a_cell_type_without_kinetics",
         "simulate(400 x 20, seed 0), type b's u and s shuffled per gene, 100 epochs", _uncertainty_shuffled,
         [Check("auc", ">=", 0.9, "roc_auc_score(is_b, -scores) >= 0.9"),
          Check("median_b_over_min_median_other", "<", 0.5, "median(b) < 0.5 * min(median(other types))")]),
    Case("uncertainty_steady_type",
         "test_uncertainty.py::test_uncertainty_and_permutation_score_flag_a_cell_type_at_steady_state",
         "simulate(400 x 20, seed 0), type b at its induction steady state, 100 epochs", _uncertainty_steady,
         [Check("auc_cosine_variance", ">=", 0.9, "AUC(cosine variance) >= 0.9"),
          Check("auc_cosine_mean", ">=", 0.9, "AUC(-cosine mean) >= 0.9"),
          Check("auc_permutation", ">=", 0.9, "AUC(-permutation score) >= 0.9")]),
    Case("state_head", "test_collapsed.py::test_state_head_is_fitted_to_the_exact_posterior_mean_and_weights_velocity",
         "state_head_fit: simulate(300 x 10, seed 3), pi_guide='collapsed', 60 epochs, batch 64", _state_head,
         [Check("margin", ">", _import("test_collapsed").STATE_HEAD_MARGIN,
                "ce_constant - ce_head > STATE_HEAD_MARGIN")]),
    Case("lightning_ddp", "test_lightning.py::test_ddp_loss_curve_close_to_single_process",
         "ddp: simulate(200 x 8, seed 0), 2 gloo processes (ddp_fork), 8 epochs; single-process fits at seed, seed+1",
         _lightning_ddp,
         [Check("max_ddp_gap_over_noise", "<=", 2.0, "max|ddp - one| <= 2 * noise"),
          Check("fall_over_noise", ">", 4.0, "one[0] - one[-1] > 4 * noise")]),
    Case("lightning_early_stopping", "test_lightning.py::test_early_stopping_after_warmup",
         "simulate(200 x 8, seed 0), Lightning single process, patience 1 after a 3-epoch warm-up, <= 40 epochs",
         _lightning_early_stopping,
         [Check("stopped_early", ">=", 1.0, "stopped_early and < 40 epochs"),
          Check("best_epoch", ">=", 3.0, "best_epoch >= 3")]),
]}


# ---- running -------------------------------------------------------------------------------------------------

def _row_path(name: str, seed: int, threads: int) -> Path:
    return RUNS_DIR / f"{name}__seed{seed}__threads{threads}.json"


def _one(name: str, seed: int, threads: int) -> None:
    """In the child process: measure one (case, seed, threads) and write its row."""
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")  # the fits' own and third-party warnings: not what is measured here
    case = CASES[name]
    t0 = time.perf_counter()
    metrics = {k: (None if v is None else float(v)) for k, v in case.measure(seed).items()}
    row = {"case": name, "tests": case.tests, "seed": seed, "threads": threads,
           "seconds": round(time.perf_counter() - t0, 1), "metrics": metrics,
           "passed": {c.metric: c.passes(metrics.get(c.metric)) for c in case.checks},
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine()}
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    _row_path(name, seed, threads).write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps({k: row[k] for k in ("case", "seed", "threads", "seconds", "passed")}))


def run(names: list[str], seeds: list[int], threads: list[int], force: bool) -> int:
    failures = 0
    for name in names:
        for n in threads:
            for seed in seeds:
                if _row_path(name, seed, n).exists() and not force:
                    continue
                env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n),
                           VELOPYRO_TEST_THREADS=str(n), MPLBACKEND="Agg")
                env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                print(f"[{name}] seed {seed}, {n} thread(s) ...", flush=True)
                proc = subprocess.run([sys.executable, "-m", "benchmarks.test_thresholds", "_one", name, str(seed),
                                       str(n)], env=env, cwd=REPO)
                failures += proc.returncode != 0
    return failures


# ---- report --------------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3f}"


def report() -> Path:
    rows = [json.loads(p.read_text()) for p in sorted(RUNS_DIR.glob("*.json"))]
    lines = ["# Test thresholds against the distribution of their fits",
             "",
             "Written by `python -m benchmarks.test_thresholds report` from the rows in `runs/` "
             "(`python -m benchmarks.test_thresholds run`: one fit per fixture, fit seed and torch thread count; "
             "the data's seeds are the tests'). For each asserted quantity: min / mean / max over the rows, the "
             "test's threshold, and how many rows would fail it. A threshold is justified when it sits clearly "
             "on the safe side of the worst row.",
             ""]
    for name, case in CASES.items():
        mine = [r for r in rows if r["case"] == name]
        lines += [f"## {name}", "", f"- tests: `{case.tests}`", f"- fixture: {case.fixture}"]
        if not mine:
            lines += ["- not run yet", ""]
            continue
        seeds = sorted({r["seed"] for r in mine})
        threads = sorted({r["threads"] for r in mine})
        lines += [f"- rows: {len(mine)} (fit seeds {seeds}; torch threads {threads}; "
                  f"{np.median([r['seconds'] for r in mine]):.0f} s median per row)", "",
                  "| quantity | assertion | threshold | min | mean | max | worst row | failing rows |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in case.checks:
            vals = [(r["metrics"].get(c.metric), r) for r in mine]
            finite = [(v, r) for v, r in vals if v is not None and np.isfinite(v)]
            arr = np.array([v for v, _ in finite], dtype=float)
            if arr.size:
                worst_v, worst_r = (min if c.op.startswith(">") else max)(finite, key=lambda vr: vr[0])
                worst = f"seed {worst_r['seed']}, {worst_r['threads']} thr"
                stats = [_fmt(arr.min()), _fmt(arr.mean()), _fmt(arr.max())]
            else:
                worst, stats = "-", ["nan"] * 3
            failing = "-" if c.op == "report" else f"{sum(not c.passes(v) for v, _ in vals)} / {len(vals)}"
            threshold = "not asserted" if c.op == "report" else f"{c.op} {c.threshold:g}"
            lines.append(f"| `{c.metric}` | `{c.assertion}` | {threshold} | {' | '.join(stats)} | "
                         f"{worst} | {failing} |")
        lines.append("")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / "results.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.test_thresholds", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the audited fixtures and their assertions")
    p_run = sub.add_parser("run", help="fit each fixture over seeds and thread counts; one JSON row per fit")
    p_run.add_argument("--only", nargs="+", choices=sorted(CASES), help="these fixtures only (default: all)")
    p_run.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p_run.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p_run.add_argument("--force", action="store_true", help="refit rows that exist")
    sub.add_parser("report", help="write results.md from the rows")
    p_one = sub.add_parser("_one")  # internal: one row, in a fresh process
    p_one.add_argument("name")
    p_one.add_argument("seed", type=int)
    p_one.add_argument("threads", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for case in CASES.values():
            print(f"{case.name}: {case.tests}\n    {case.fixture}")
            for c in case.checks:
                print(f"    {c.metric} {c.op} {c.threshold:g}    ({c.assertion})")
        return 0
    if args.cmd == "_one":
        _one(args.name, args.seed, args.threads)
        return 0
    if args.cmd == "run":
        failures = run(args.only or list(CASES), args.seeds, args.threads, args.force)
        print(f"wrote {report()}")
        return 1 if failures else 0
    print(f"wrote {report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
