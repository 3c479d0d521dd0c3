"""``benchmarks/gpu.py`` (the GPU benchmark) at its ``--tiny`` size on the CPU: the results have every field,
finite and positive. velopyro only (the test environment has no velovi); nothing here runs on a GPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import gpu

FIELDS = ("seconds_per_epoch", "fit_seconds", "setup_seconds", "readout_seconds", "peak_rss_mb", "epochs",
          "epochs_all_starts", "n_cells", "n_genes")


@pytest.mark.slow
def test_tiny_cpu_run(tmp_path):
    out = tmp_path / "out"
    res = gpu.main(["--device", "cpu", "--tiny", "--cases", "sim100k", "disk1m", "--tools", "velopyro",
                    "--threads", "1", "--out", str(out), "--data-dir", str(tmp_path / "data")])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert (out / "results.md").read_text().count("| velopyro |") == 2
    meta = saved["meta"]
    assert meta["device"] == "cpu" and not meta["gpu_run"] and meta["versions"]["torch"] == torch.__version__
    rows = saved["rows"]
    assert [(r["case"], r["tool"]) for r in rows] == [("sim100k", "velopyro"), ("disk1m", "velopyro")]
    for r in rows:
        assert "error" not in r, r.get("error")
        for key in FIELDS:
            assert math.isfinite(r[key]) and r[key] > 0, (r["case"], key, r[key])
        assert (r["n_cells"], r["n_genes"], r["max_epochs"]) == (gpu.TINY_CELLS, gpu.TINY_GENES, gpu.TINY_EPOCHS)
        assert r["epochs"] <= r["max_epochs"] and len(r["epoch_seconds"]) == r["epochs"]
        assert r["readout_samples"] == 25 and r["peak_gpu_mb"] is None  # no GPU figures on the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_a_device(tmp_path):
    with pytest.raises(SystemExit, match="torch sees no CUDA device"):
        gpu.main(["--tiny", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
