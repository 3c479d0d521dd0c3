"""Run each tutorial script at its small size (``VELOPYRO_TUTORIAL_SMALL=1``) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

# script -> (figure folder, lines the run must print)
EXPECTED = {
    "ppc_pancreas.py": ("ppc_pancreas", ["PIT conditional: KS", "PIT    marginal: KS", "predictive interval"]),
    "count_likelihoods_loo.py": ("count_likelihoods_loo", ["best by LOO:", "elpd_loo", "Pareto k > 0.7"]),
    "custom_likelihood.py": ("custom_likelihood", ["fitted zero-inflation gate", "elpd_loo", "replicated zeros"]),
    "custom_kinetics.py": ("custom_kinetics", ["held-out log-likelihood per cell", "basal level alpha_0 / beta, "
                                               "fitted vs truth"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_at_small_size(script: str, tmp_path: Path) -> None:
    env = dict(os.environ, VELOPYRO_TUTORIAL_SMALL="1", VELOPYRO_TUTORIAL_OUTPUT=str(tmp_path),
               MPLBACKEND="Agg", PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(TUTORIALS / script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    folder, lines = EXPECTED[script]
    for line in lines:
        assert line in proc.stdout, f"{script} did not print {line!r}:\n{proc.stdout[-3000:]}"
    figures = list((tmp_path / folder).glob("*.png"))
    assert len(figures) >= 3, f"{script} wrote {figures}"


@pytest.mark.slow
def test_pancreas_uncertainty_notebook_runs_at_small_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook, executed top to bottom (400 cells, 40 genes, 15 epochs), CellRank cells included."""
    pytest.importorskip("cellrank", reason="the notebook's fate analysis needs the cellrank extra")
    import nbformat
    from nbclient import NotebookClient

    for key, value in (("VELOPYRO_TUTORIAL_SMALL", "1"), ("OMP_NUM_THREADS", "1"),
                       ("PYTHONWARNINGS", "ignore::FutureWarning")):
        monkeypatch.setenv(key, value)  # the kernel inherits this environment
    nb = nbformat.read(TUTORIALS / "pancreas_uncertainty.ipynb", as_version=4)
    # the committed notebook carries the full-size outputs; strip them so only this run's output is read
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")
    assert "small run" in text and "after preprocessing: 400 cells x 40 genes" in text
    for line in ("share of cell-gene pairs whose 90% interval excludes 0", "median intrinsic / extrinsic",
                 "median permutation score over genes, per cell type", "terminal states found:",
                 "mean fate probability per cell type"):
        assert line in text, f"the notebook did not print {line!r}:\n{text[-3000:]}"
    assert "cellrank is not installed" not in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 7, f"{images} figures"  # loss, stream + time, phase, interval, uncertainty, scores, fates
    # the printed permutation-score summary names every cell type of the data
    for ct in ("Ductal", "Ngn3 high EP", "Beta", "Alpha"):
        assert ct in text.split("median permutation score")[1]
