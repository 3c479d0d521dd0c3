"""Execute ``tutorials/pancreas_uncertainty.ipynb`` at full size, in place, and keep its figures.

    python -m benchmarks.run_notebook            # in an environment with velopyro[cellrank,plot], nbclient, ipykernel

The notebook is executed top to bottom with ``VELOPYRO_TUTORIAL_SMALL`` unset (all 3,696 cells, up to 500
epochs) and written back with its outputs: the numbers the README quotes under "Uncertainty" are the ones
it prints. The figures of four cells are also written as PNG files to ``benchmarks/results/uncertainty/``
(``pancreas_stream_latent_time.png``, ``pancreas_velocity_interval.png``, ``pancreas_uncertainty.png``,
``pancreas_permutation_scores.png``), and ``notebook.json`` records the wall time and the versions.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "tutorials" / "pancreas_uncertainty.ipynb"
OUT = RESULTS_DIR / "uncertainty"
#: a line of each figure cell's source -> the file its (last) figure goes to
FIGURES = {
    "velopyro.pl.latent_time(adata, basis=basis, ax=axes[1])": "pancreas_stream_latent_time.png",
    "velopyro.pl.velocity_interval(adata, genes=genes": "pancreas_velocity_interval.png",
    "velopyro.pl.uncertainty(adata, basis=basis": "pancreas_uncertainty.png",
    "velopyro.pl.permutation_scores(adata)": "pancreas_permutation_scores.png",
}


def run(timeout: int | None = None) -> dict:
    """Execute the notebook in place; write its figures and a summary; return the summary."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.pop("VELOPYRO_TUTORIAL_SMALL", None)
    # the kernel imports this checkout's velopyro, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.perf_counter() - t0
    nbformat.write(nb, NOTEBOOK)
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        name = next((f for key, f in FIGURES.items() if key in cell.source), None)
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if name and pngs:
            (OUT / name).write_bytes(base64.b64decode(pngs[-1]))
            written.append(name)
    import velopyro

    summary = {"command": "python -m benchmarks.run_notebook", "seconds": round(seconds, 1), "figures": written,
               "velopyro": velopyro.__version__, "python": platform.python_version()}
    (OUT / "notebook.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    print(json.dumps(run(parser.parse_args(argv).timeout), indent=1))


if __name__ == "__main__":
    main()
