"""Cost of reading posterior draws by tracing the guide and replaying the model.

    python -m benchmarks.posterior_trace   # writes benchmarks/results/posterior_trace/results.{json,md}

:func:`velopyro.posterior.draw` traces the guide on a batch and replays the model against it (with its
states enumerated and its read-outs recorded as deterministic sites). Before, the posterior wrote the
default guide out by hand: the encoder ran once per batch and each draw was ``loc + scale * eps`` followed
by the kinetics and the likelihood. This script times both on the same model (pancreas-sized gene panel:
2,000 genes; batches of 256 cells; the default Dirichlet guide, untrained weights: the cost does not depend
on them), interleaved draw by draw in one process on one torch thread, and reports the median process CPU
time per draw (CPU time: other processes compete for the cores). Both give the same numbers (checked here
and in ``tests/test_posterior_trace.py``).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from benchmarks.common import RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "posterior_trace"
N_CELLS, N_GENES, BATCH, N_DRAWS, ROUNDS = 512, 2000, 256, 10, 3


def _hand_written(m, g, batch, n_samples):
    """The pre-trace read-out: encoder once per batch, then the draws by hand."""
    idx, u, s, sfu, sfs, _ = batch
    r = m.rates()
    z_loc, z_scale = g.encode(u, s, sfu, sfs)
    out = []
    for _ in range(n_samples):
        z = z_loc + z_scale * torch.randn_like(z_loc)
        ks = m.kinetic_state(z, r)
        ll = m.state_log_likelihood(ks["u_bar"], ks["s_bar"], u, s, sfu, sfs)
        out.append((z, ks, ll, g.pi_head(z).sample()))
    return out


def main() -> None:
    """Run the timing and write the results."""
    set_threads(1)
    from velopyro import VeloPyro, posterior
    from velopyro.datasets import simulate

    adata = simulate(N_CELLS, N_GENES, seed=0)
    vp = VeloPyro(adata)
    m, g = vp.model.eval(), vp.guide.eval()
    batch = vp.data.batch(torch.arange(BATCH), torch.device("cpu"))
    times: dict[str, list[float]] = {"hand-written (before)": [], "traced guide, replayed model": []}
    with torch.no_grad():
        torch.manual_seed(0)
        a = _hand_written(m, g, batch, 1)[0]
        torch.manual_seed(0)
        b = posterior.draw(m, g, *batch, n_cells=vp.n_cells)
        same = bool(torch.equal(a[0], b["z"]) and torch.equal(a[2][0], b["ll_u"]) and torch.equal(a[3], b["pi"]))
        for _ in range(ROUNDS):
            t0 = time.process_time()
            _hand_written(m, g, batch, N_DRAWS)
            times["hand-written (before)"].append((time.process_time() - t0) / N_DRAWS)
            t0 = time.process_time()
            for _ in range(N_DRAWS):
                posterior.draw(m, g, *batch, n_cells=vp.n_cells)
            times["traced guide, replayed model"].append((time.process_time() - t0) / N_DRAWS)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["traced guide, replayed model"] / med["hand-written (before)"]
    res = {"n_genes": N_GENES, "batch": BATCH, "draws_per_round": N_DRAWS, "rounds": ROUNDS,
           "cpu_s_per_draw": times, "median_cpu_s_per_draw": med, "ratio": ratio, "same_values": same}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2))
    lines = ["# Posterior draws: traced guide and replayed model vs the hand-written read-out", "",
             f"{BATCH} cells x {N_GENES} genes per batch, one torch thread, median process CPU time per draw over "
             f"{ROUNDS} interleaved rounds of {N_DRAWS} draws (`python -m benchmarks.posterior_trace`).", "",
             "| read-out | CPU ms per draw |", "|---|---|"]
    lines += [f"| {k} | {1000 * v:.1f} |" for k, v in med.items()]
    lines += ["", f"Ratio traced / hand-written: {ratio:.2f}. Same values seed for seed: {same}."]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
