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
