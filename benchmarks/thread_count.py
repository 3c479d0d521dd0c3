"""How much a fit at a fixed seed depends on torch's thread count (issue 10, item 7).

``python -m benchmarks.thread_count`` fits the same simulated data (600 cells, 20 and 50 genes, 5 epochs,
seed 0) with 1 and with 2 torch threads and prints the largest difference of q(z)'s first draw and of the
posterior mean velocity. The random streams are the same (the threaded Dirichlet sampler's included); what
differs is the summation order of torch's multi-threaded kernels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import torch
from pyro import poutine

from velopyro import VeloPyro
from velopyro.datasets import simulate


def _first_z(model: VeloPyro) -> torch.Tensor:
    pyro.set_rng_seed(0)
    model.guide.train()
    args = model.data.batch(torch.arange(256), torch.device("cpu"))
    with torch.no_grad():
        tr = poutine.trace(model.guide).get_trace(*args, n_cells=model.n_cells)
    model.guide.eval()
    return tr.nodes["z"]["value"]


def main() -> None:
    """Print the 1- vs 2-thread differences."""
    warnings.filterwarnings("ignore")
    old = torch.get_num_threads()
    try:
        for n_genes in (20, 50):
            sim = simulate(n_cells=600, n_genes=n_genes, seed=0)
            z, v, loss = [], [], []
            for n in (1, 2):
                torch.set_num_threads(n)
                z.append(_first_z(VeloPyro(sim)))
                m = VeloPyro(sim).fit(max_epochs=5, progress_bar=False, seed=0)
                v.append(m.get_velocity(n_samples=5))
                loss.append(np.asarray(m.history["train_loss"]))
            rel = np.abs(loss[0] - loss[1]) / np.abs(loss[0])
            print(f"  relative train-loss difference per epoch: {', '.join(f'{r:.1g}' for r in rel)}")
            print(f"600 cells x {n_genes} genes, 1 vs 2 threads: first z draw max |delta| "
                  f"{(z[0] - z[1]).abs().max().item():.2g}; velocity after 5 epochs max |delta| "
                  f"{np.abs(v[0] - v[1]).max():.3g} (max |v| {np.abs(v[0]).max():.3g})")
    finally:
        torch.set_num_threads(old)


if __name__ == "__main__":
    main()
