"""Run the tutorial notebooks at full size and keep what they print: the source of the likelihood / PPC numbers.

    python -m benchmarks.run_tutorials                       # all three, one after another
    python -m benchmarks.run_tutorials count_likelihoods_loo --epochs 100
    python -m benchmarks.run_tutorials ppc_pancreas --store  # also store the full-size outputs in the notebook

Each notebook (``tutorials/<name>.ipynb``) is executed top to bottom by nbclient in a fresh kernel. Its
printed output (stdout and stderr of every cell) goes to ``benchmarks/results/tutorials/<name>.log`` and its
figures to ``benchmarks/results/tutorials/<name>/``; ``summary.json`` records the notebook, the wall time
and the exit status of each. The tutorials compute every number they print from the run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR

TUTORIALS = ("ppc_pancreas", "count_likelihoods_loo", "custom_likelihood")
ROOT = Path(__file__).resolve().parent.parent


def run(name: str, out: Path, epochs: int | None, threads: int, store: bool = False) -> dict:
    """Execute ``tutorials/<name>.ipynb`` at full size; return its summary row."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    env = {"VELOPYRO_TUTORIAL_OUTPUT": str(out), "OMP_NUM_THREADS": str(threads)}
    if epochs:
        env["VELOPYRO_TUTORIAL_EPOCHS"] = str(epochs)
    saved = {k: os.environ.get(k) for k in (*env, "VELOPYRO_TUTORIAL_SMALL")}
    os.environ.update(env)  # the kernel inherits this process's environment
    os.environ.pop("VELOPYRO_TUTORIAL_SMALL", None)
    path = ROOT / "tutorials" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    returncode = 0
    try:
        NotebookClient(nb, timeout=None, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "tutorials")}}).execute()
    except CellExecutionError as err:
        returncode = 1
        print(err, file=sys.stderr)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")
    (out / f"{name}.log").write_text(text)
    if store and returncode == 0:
        nbformat.write(nb, path)
    return {"tutorial": name, "notebook": f"tutorials/{name}.ipynb", "epochs": epochs, "threads": threads,
            "returncode": returncode, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"tutorials to run (default: all of {', '.join(TUTORIALS)})")
    parser.add_argument("--epochs", type=int, default=None, help="VELOPYRO_TUTORIAL_EPOCHS (default: each tutorial's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per tutorial")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tutorials")
    parser.add_argument("--store", action="store_true",
                        help="write the executed notebook (full-size outputs) back to tutorials/<name>.ipynb")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TUTORIALS))
    if unknown:
        parser.error(f"unknown tutorial(s) {unknown}; choose from {list(TUTORIALS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.names or TUTORIALS:
        row = run(name, args.out, args.epochs, args.threads, args.store)
        summary[name] = row
        summary_path.write_text(json.dumps(summary, indent=1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
