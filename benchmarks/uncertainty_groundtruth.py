"""Ground truth for veloVI's uncertainty read-outs on the simulator (numbers quoted in the README).

One of four cell types (cut on the true clock) gets its u and s shuffled per gene, independently: no
kinetics there. Prints the AUC with which each per-cell statistic flags the shuffled cells and the
permutation score flags the shuffled type. ``python -m benchmarks.uncertainty_groundtruth`` (about 20 s).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.metrics import roc_auc_score

import velopyro


def main() -> None:
    """Fit, score, print."""
    t0 = time.time()
    adata = velopyro.datasets.simulate(n_cells=400, n_genes=20, seed=0)
    rng = np.random.default_rng(1)
    types = np.digitize(adata.obs["true_t"], [5, 10, 15])
    adata.obs["type"] = np.array(["a", "b", "c", "d"])[types]
    shuffled = types == 1
    for key in ("Mu", "Ms"):
        sub = adata.layers[key][shuffled]
        adata.layers[key][shuffled] = sub[np.argsort(rng.random(sub.shape), axis=0), np.arange(sub.shape[1])]
    x = adata.layers["Ms"]
    _, idx = cKDTree(x).query(x, k=16)
    rows = np.repeat(np.arange(len(x)), 15)
    g = sp.csr_matrix((np.ones(len(rows)), (rows, idx[:, 1:].ravel())), shape=(len(x), len(x)))
    adata.obsp["connectivities"] = sp.csr_matrix(((g + g.T) > 0).astype(float))
    model = velopyro.VeloPyro(adata)
    model.fit(max_epochs=100, batch_size=128, progress_bar=False, seed=0)
    df = model.get_directional_uncertainty(n_samples=30, extrinsic=True, n_extrinsic_samples=10)
    print("AUC of each statistic for the shuffled cells (higher uncertainty; for *_mean: lower):")
    for k in df.columns:
        print(f"  {k}: {roc_auc_score(shuffled, -df[k] if 'mean' in k else df[k]):.3f}")
    print("median per type:\n", df.groupby(adata.obs["type"].to_numpy()).median().T.round(3))
    ps = model.get_permutation_scores("type")
    lab = np.broadcast_to(ps.columns.to_numpy() == "b", ps.shape).ravel()
    print("permutation score median per type:", ps.median().round(3).to_dict())
    print(f"AUC of a low permutation score for the shuffled type: {roc_auc_score(lab, -ps.to_numpy().ravel()):.3f}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
