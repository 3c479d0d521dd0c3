"""Run the tutorials at full size and keep what they print: the source of the likelihood / PPC numbers.

    python -m benchmarks.run_tutorials                       # all three, one after another
    python -m benchmarks.run_tutorials count_likelihoods_loo --epochs 100

Each tutorial's output (stdout and stderr) goes to ``benchmarks/results/tutorials/<name>.log`` and its
figures to ``benchmarks/results/tutorials/<name>/``; ``summary.json`` records the command, the wall time
and the exit status of each. The tutorials compute every number they print from the run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR

TUTORIALS = ("ppc_pancreas", "count_likelihoods_loo", "custom_likelihood")
ROOT = Path(__file__).resolve().parent.parent


def run(name: str, out: Path, epochs: int | None, threads: int) -> dict:
    """Run ``tutorials/<name>.py`` at full size; return its summary row."""
    env = dict(os.environ, VELOPYRO_TUTORIAL_OUTPUT=str(out), MPLBACKEND="Agg", OMP_NUM_THREADS=str(threads))
    env.pop("VELOPYRO_TUTORIAL_SMALL", None)
    if epochs:
        env["VELOPYRO_TUTORIAL_EPOCHS"] = str(epochs)
    cmd = [sys.executable, str(ROOT / "tutorials" / f"{name}.py")]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    return {"tutorial": name, "epochs": epochs, "threads": threads, "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"tutorials to run (default: all of {', '.join(TUTORIALS)})")
    parser.add_argument("--epochs", type=int, default=None, help="VELOPYRO_TUTORIAL_EPOCHS (default: each tutorial's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per tutorial")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tutorials")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TUTORIALS))
    if unknown:
        parser.error(f"unknown tutorial(s) {unknown}; choose from {list(TUTORIALS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.names or TUTORIALS:
        row = run(name, args.out, args.epochs, args.threads)
        summary[name] = row
        summary_path.write_text(json.dumps(summary, indent=1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
