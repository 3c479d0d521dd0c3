"""Run each tutorial notebook at its small size (``VELOPYRO_TUTORIAL_SMALL=1``) through nbclient."""

from __future__ import annotations

from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

# notebook -> (figure folder, lines the run must print)
EXPECTED = {
    "ppc_pancreas.ipynb": ("ppc_pancreas", ["PIT conditional: KS", "PIT    marginal: KS", "predictive interval"]),
    "count_likelihoods_loo.ipynb": ("count_likelihoods_loo", ["best by LOO:", "elpd_loo", "Pareto k > 0.7"]),
    "custom_likelihood.ipynb": ("custom_likelihood", ["fitted zero-inflation gate", "elpd_loo", "replicated zeros"]),
    "custom_kinetics.ipynb": ("custom_kinetics", ["held-out log-likelihood per cell", "basal level alpha_0 / beta, "
                                                  "fitted vs truth"]),
}


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Execute ``tutorials/<name>`` at the small size with its stored outputs stripped; return the notebook."""
    import nbformat
    from nbclient import NotebookClient

    for key, value in (("VELOPYRO_TUTORIAL_SMALL", "1"), ("VELOPYRO_TUTORIAL_OUTPUT", str(tmp_path)),
                       ("OMP_NUM_THREADS", "1"), ("PYTHONWARNINGS", "ignore::FutureWarning")):
        monkeypatch.setenv(key, value)  # the kernel inherits this environment
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    # the committed notebook carries stored outputs; strip them so only this run's output is read
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(EXPECTED))
def test_tutorial_runs_at_small_size(notebook: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute(notebook, tmp_path, monkeypatch)
    text = _stdout(nb)
    folder, lines = EXPECTED[notebook]
    for line in lines:
        assert line in text, f"{notebook} did not print {line!r}:\n{text[-3000:]}"
    figures = list((tmp_path / folder).glob("*.png"))
    assert len(figures) >= 3, f"{notebook} wrote {figures}"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, f"{notebook} showed no figure"


def test_tutorial_notebooks_say_which_size_their_outputs_are_from() -> None:
    import nbformat

    for name in EXPECTED:
        first = nbformat.read(TUTORIALS / name, as_version=4).cells[0]
        assert first.cell_type == "markdown" and "**Stored outputs.**" in first.source, name
        assert "VELOPYRO_TUTORIAL_SMALL=1" in first.source and "full size" in first.source, name


@pytest.mark.slow
def test_pancreas_uncertainty_notebook_runs_at_small_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook, executed top to bottom (400 cells, 40 genes, 15 epochs), CellRank cells included."""
    pytest.importorskip("cellrank", reason="the notebook's fate analysis needs the cellrank extra")
    nb = _execute("pancreas_uncertainty.ipynb", tmp_path, monkeypatch)
    text = _stdout(nb)
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
