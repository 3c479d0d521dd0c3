"""Wall time of ``velopyro fit --help``: the help alone, and the imports it needed before (the library and torch).

    python -m benchmarks.cli_help   # writes benchmarks/results/cli_help/results.{json,md}

Before, ``velopyro fit --help`` imported ``velopyro.api`` (and with it torch and pyro) to read the defaults
and the registries' names; it now reads the defaults from their declarations with ``ast`` and the names
from :mod:`velopyro._registry` (``tests/test_cli.py`` checks both against the imported values). Each round
runs, in fresh interpreters and interleaved, (a) ``python -m velopyro fit --help`` and (b) ``python -c
"import velopyro.api"`` (the import cost the help carried before, without the help itself); the table gives
the median wall time over the rounds. Contended machine: read the ratio, not the seconds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from benchmarks.common import RESULTS_DIR

OUT = RESULTS_DIR / "cli_help"
ROUNDS = 7
COMMANDS = {
    "velopyro fit --help (now)": [sys.executable, "-m", "velopyro", "fit", "--help"],
    "import velopyro.api (what the help imported before)": [sys.executable, "-c", "import velopyro.api"],
}


def main() -> None:
    """Run the rounds and write the results."""
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(ROUNDS):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    names = list(COMMANDS)
    ratio = med[names[1]] / med[names[0]]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"rounds": ROUNDS, "wall_s": times, "median_wall_s": med,
                                                   "ratio": ratio}, indent=2))
    lines = ["# `velopyro fit --help` without importing torch", "",
             f"Median wall time over {ROUNDS} interleaved rounds in fresh interpreters "
             "(`python -m benchmarks.cli_help`; a shared, contended machine: read the ratio).", "",
             "| command | wall s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in med.items()]
    lines += ["", f"The import alone takes {ratio:.1f}x the whole help now."]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
