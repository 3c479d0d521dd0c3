"""The command line: help, a tiny fit, and one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

import velopyro
from velopyro.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("velopyro: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["demo", "--help"]])
def test_help(capsys, argv) -> None:
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    assert "usage: velopyro" in out
    if argv[0] == "fit":
        for flag in ("--spliced-layer", "--unspliced-layer", "--no-preprocess", "--likelihood",
                     "--state-coupling", "--pi-guide", "--max-epochs", "--batch-size", "--lr", "--seed",
                     "--device", "--n-samples", "--save-model", "--quiet"):
            assert flag in out


def test_no_command_and_unknown_option(capsys) -> None:
    code, _, err = _run(capsys)
    assert code == 2 and "usage" in err
    code, _, err = _run(capsys, "fit", "x.h5ad", "-o", "y.h5ad", "--likelihood", "gamma")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err


def test_python_dash_m_help() -> None:
    res = subprocess.run([sys.executable, "-m", "velopyro", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0
    assert "fit" in res.stdout and "demo" in res.stdout


def test_fit_tiny(tmp_path, capsys) -> None:
    src, dst, model_dir = tmp_path / "in.h5ad", tmp_path / "sub" / "out.h5ad", tmp_path / "model"
    velopyro.datasets.simulate(n_cells=300, n_genes=20, seed=0).write_h5ad(src)
    code, out, err = _run(capsys, "fit", str(src), "-o", str(dst), "--max-epochs", "2", "--n-samples", "2",
                          "--save-model", str(model_dir), "--quiet")
    assert code == 0, err
    assert str(dst) in out
    res = ad.read_h5ad(dst)
    for key in ("velocity", "velocity_u", "fit_t", "fit_state"):
        assert key in res.layers and res.layers[key].shape == (300, 20)
    assert np.isfinite(res.layers["velocity"]).all()
    assert {"fit_alpha", "fit_beta", "fit_gamma", "fit_t_"} <= set(res.var)
    assert "latent_time" in res.obs
    assert res.uns["velopyro"]["config"]["spliced_layer"] == "Ms"
    assert len(res.uns["velopyro"]["history"]["epoch"]) == 2
    assert (model_dir / "config.json").exists()
    # the saved model directory is not overwritten
    code, _, err = _run(capsys, "fit", str(src), "-o", str(dst), "--max-epochs", "1",
                        "--save-model", str(model_dir), "--quiet")
    _assert_one_line_error(code, err, "--save-model")


def test_fit_checkpoint_and_resume(tmp_path, capsys) -> None:
    src, ckpt = tmp_path / "in.h5ad", tmp_path / "ckpt"
    velopyro.datasets.simulate(n_cells=120, n_genes=6, seed=0).write_h5ad(src)
    common = ("--n-samples", "1", "--batch-size", "64", "--quiet")
    code, _, err = _run(capsys, "fit", str(src), "-o", str(tmp_path / "a.h5ad"), "--max-epochs", "2",
                        "--checkpoint-dir", str(ckpt), *common)
    assert code == 0, err
    # the default fits once: one checkpoint in the directory itself (rate_init="select" keeps one per start,
    # tests/test_checkpoint.py)
    assert torch.load(ckpt / "checkpoint.pt", weights_only=True)["epoch"] == 2
    code, _, err = _run(capsys, "fit", str(src), "-o", str(tmp_path / "b.h5ad"), "--max-epochs", "3",
                        "--resume", str(ckpt), *common)
    assert code == 0, err
    assert list(ad.read_h5ad(tmp_path / "b.h5ad").uns["velopyro"]["history"]["epoch"]) == [1, 2, 3]
    assert torch.load(ckpt / "checkpoint.pt", weights_only=True)["epoch"] == 3
    # resuming with another learning rate is refused in one line
    code, _, err = _run(capsys, "fit", str(src), "-o", str(tmp_path / "c.h5ad"), "--max-epochs", "4",
                        "--resume", str(ckpt), "--lr", "0.5", *common)
    _assert_one_line_error(code, err, "lr=0.01")


def _raw(tmp_path, spliced: np.ndarray, name: str = "raw.h5ad") -> str:
    rng = np.random.default_rng(0)
    unspliced = rng.poisson(2.0, spliced.shape).astype(np.float32)
    adata = ad.AnnData(spliced.copy(), layers={"spliced": spliced, "unspliced": unspliced})
    path = tmp_path / name
    adata.write_h5ad(path)
    return str(path)


def test_missing_file(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "fit", str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "o.h5ad"))
    _assert_one_line_error(code, err, "nope.h5ad", "does not exist")


def test_not_an_h5ad(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    code, _, err = _run(capsys, "fit", str(bad), "-o", str(tmp_path / "o.h5ad"))
    _assert_one_line_error(code, err, "bad.h5ad")


def test_missing_layer(tmp_path, capsys) -> None:
    counts = np.random.default_rng(1).poisson(3.0, (50, 30)).astype(np.float32)
    path = _raw(tmp_path, counts)
    code, _, err = _run(capsys, "fit", path, "-o", str(tmp_path / "o.h5ad"), "--spliced-layer", "nope")
    _assert_one_line_error(code, err, "'nope'")
    code, _, err = _run(capsys, "fit", path, "-o", str(tmp_path / "o.h5ad"), "--no-preprocess")
    _assert_one_line_error(code, err, "'Ms'")


@pytest.mark.parametrize("bad_value, needle", [(np.nan, "NaN"), (-1.0, "negative")])
def test_bad_values(tmp_path, capsys, bad_value, needle) -> None:
    counts = np.random.default_rng(2).poisson(3.0, (50, 30)).astype(np.float32)
    counts[3, 4] = bad_value
    path = _raw(tmp_path, counts)
    code, _, err = _run(capsys, "fit", path, "-o", str(tmp_path / "o.h5ad"))
    _assert_one_line_error(code, err, "spliced")
    assert needle.lower() in err.lower()
    assert not (tmp_path / "o.h5ad").exists()


def test_debug_env_reraises(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(os.environ, "VELOPYRO_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["fit", str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "o.h5ad")])


def test_choices_and_defaults_come_from_the_registries_and_train_config(capsys, monkeypatch) -> None:
    from velopyro import cli
    from velopyro.likelihoods import LIKELIHOODS, Normal
    from velopyro.train import TrainConfig

    monkeypatch.setitem(LIKELIHOODS, "my_normal", Normal)  # a newly registered likelihood is offered
    code, out, _ = _run(capsys, "fit", "--help")
    assert code == 0 and "my_normal" in out and "logistic_normal" in out
    lib = cli._library_defaults()
    cfg = TrainConfig()
    assert (lib["max_epochs"], lib["batch_size"], lib["lr"], lib["seed"]) == (cfg.max_epochs, cfg.batch_size,
                                                                               cfg.lr, cfg.seed)
    assert f"(default: {cfg.batch_size})" in " ".join(out.split())


def test_cli_defaults_read_without_import_equal_the_library_defaults() -> None:
    import dataclasses
    import inspect

    from velopyro import cli
    from velopyro.api import RATE_INITS, VeloPyro
    from velopyro.train import TrainConfig

    lib = cli._library_defaults()
    expected = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    expected.update({name: par.default for name, par in inspect.signature(VeloPyro.__init__).parameters.items()
                     if par.default is not inspect.Parameter.empty})
    expected["n_samples"] = inspect.signature(VeloPyro.write_to_adata).parameters["n_samples"].default
    assert lib == expected
    assert cli._choices()["rate_init"] == list(RATE_INITS)


def test_one_config_gives_the_cli_api_and_train_defaults() -> None:
    """velopyro.config is the one declaration: the CLI's parsed defaults and help, VeloPyro's and
    write_to_adata's signature defaults, fit's and train_svi's TrainConfig all read it."""
    import dataclasses
    import inspect

    from velopyro import api, cli, config, covariates, train

    assert train.TrainConfig is config.TrainConfig  # re-exported: one class
    assert covariates.BATCH_EFFECTS is config.BATCH_EFFECTS and covariates.BATCH_ENCODERS is config.BATCH_ENCODERS
    assert dataclasses.asdict(config.TrainConfig.from_options()) == dataclasses.asdict(config.TrainConfig())
    init = {n: p.default for n, p in inspect.signature(api.VeloPyro.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}
    assert init == dict(config.MODEL_DEFAULTS) == dataclasses.asdict(config.ModelConfig())
    n_samples = inspect.signature(api.VeloPyro.write_to_adata).parameters["n_samples"].default
    assert n_samples == config.N_SAMPLES
    fit_params = inspect.signature(api.VeloPyro.fit).parameters
    assert fit_params["config"].default is None  # None: TrainConfig()'s defaults
    assert cli._library_defaults() == config.library_defaults()
    parser = cli._build_parser()
    args = parser.parse_args(["fit", "in.h5ad", "-o", "out.h5ad"])
    tc = config.TrainConfig()
    assert (args.likelihood, args.seed, args.device, args.n_samples) == (
        config.MODEL_DEFAULTS["likelihood"], tc.seed, tc.device, config.N_SAMPLES)
    sub = parser._subparsers._group_actions[0].choices["fit"]
    help_text = " ".join(sub.format_help().split())
    for flag, value in (("--max-epochs", tc.max_epochs), ("--batch-size", tc.batch_size), ("--lr", tc.lr),
                        ("--rate-init", config.MODEL_DEFAULTS["rate_init"]),
                        ("--pi-guide", config.MODEL_DEFAULTS["pi_guide"])):
        assert f"(default: {value})" in help_text, flag
    assert cli._choices()["batch_effect"] == list(config.BATCH_EFFECTS)


def test_config_imports_no_torch_and_the_package_parses_no_source() -> None:
    code = ("import sys, velopyro.config, velopyro.cli; "
            "print('HEAVY', sorted(m for m in ('torch', 'pyro') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'torch'" not in res.stdout and "'pyro'" not in res.stdout
    from pathlib import Path

    for path in (Path(velopyro.__file__).parent).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import ast" not in text and "ast.parse" not in text and "literal_eval" not in text, path


def test_fit_help_is_fast_and_lists_the_registries() -> None:
    """``fit --help`` imports neither torch nor pyro, and offers every registry's names."""
    from velopyro._registry import COMPONENTS

    code = ("import sys; from velopyro.cli import main; code = main(['fit', '--help']); "
            "heavy = sorted(m for m in ('torch', 'pyro', 'anndata', 'scanpy') if m in sys.modules); "
            "print('HEAVY', heavy); sys.exit(code)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    help_text = " ".join(res.stdout.split())
    for c in COMPONENTS:
        names = list(c.registered())  # the registries themselves, imported here
        flag = "--" + c.option.replace("_", "-")
        assert f"{flag} {{{','.join(names)}}}" in help_text, (flag, names)

