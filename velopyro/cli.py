"""Command line: ``velopyro fit`` (an .h5ad in, the fitted .h5ad out) and ``velopyro demo``.

Run ``velopyro --help`` or ``velopyro COMMAND --help``. Also available as ``python -m velopyro``.

Errors in the input (missing file or layer, NaN or negative values, unknown options, ...) print one
line ``velopyro: error: ...`` on stderr and exit with status 1 (2 for unknown options); set the
environment variable ``VELOPYRO_DEBUG=1`` to get the full traceback instead.

Outputs are committed only when every step has succeeded: the output .h5ad, the ``--save-model``
directory and the demo's figures are written under temporary names next to their targets and renamed
into place together as the last step (Ctrl-C is held off meanwhile; a failed rename rolls the others
back), so a run that fails or is interrupted leaves every previous output as it was. Ctrl-C at any
point before that (also while the libraries are imported) prints one line and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

PROG = "velopyro"
DEMO_FIGURES = ("phase_portraits.png", "latent_time_umap.png", "velocity_stream_umap.png", "loss_curve.png")
DEMO_H5AD = "pancreas_velopyro.h5ad"


class _Steps:
    """Prints ``[i/n] what ... done (s)`` lines on stderr (nothing when quiet)."""

    def __init__(self, n: int, quiet: bool) -> None:
        self.n, self.quiet, self.i, self.t0 = n, quiet, 0, time.perf_counter()
        self.timings: dict[str, float] = {}

    def start(self, what: str) -> None:
        self.i += 1
        self.what, self.t, self.cpu = what, time.perf_counter(), time.process_time()
        if not self.quiet:
            print(f"[{self.i}/{self.n}] {what} ...", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def done(self, detail: str = "") -> None:
        dt, cpu = time.perf_counter() - self.t, time.process_time() - self.cpu
        self.timings[self.what] = dt
        if not self.quiet:
            extra = f"; {detail}" if detail else ""
            print(f"[{self.i}/{self.n}] {self.what}: done in {dt:.1f} s (CPU {cpu:.1f} s){extra}",
                  file=sys.stderr, flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.t0


# --------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    """``text`` as an int >= ``minimum`` (an argparse ``type``), else ``expected a <expected>, got ...``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "a whole number >= 0")


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


SEED_MAX = 2**32 - 1  # as velopyro._rng.SEED_MAX (not imported: --help must not import torch)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):  # NaN and inf are not learning rates
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _library_defaults() -> dict[str, Any]:
    """Defaults of every training option (:class:`velopyro.train.TrainConfig`), of ``VeloPyro``'s model
    options and of ``write_to_adata``'s ``n_samples``: the library's current defaults, declared once in
    :mod:`velopyro.config` (which imports no torch, so ``velopyro fit --help`` stays fast)."""
    from .config import library_defaults

    return library_defaults()


def _choices() -> dict[str, list[str]]:
    """The registered names (:data:`velopyro._registry.COMPONENTS`: likelihoods, state couplings, guides, ...)
    and ``rate_init``'s and ``batch_effect``'s choices, without importing torch: a registry already imported
    gives its names (with any registered in this process), otherwise the built-in names stand in for it."""
    from ._registry import COMPONENTS

    out = {}
    for c in COMPONENTS:
        module = sys.modules.get(c.module)
        out[c.option] = list(getattr(module, c.registry)) if module is not None else list(c.builtin)
    from ._validation import RATE_INITS

    out["rate_init"] = list(RATE_INITS)
    from .config import BATCH_EFFECTS

    out["batch_effect"] = list(BATCH_EFFECTS)
    return out


def _add_training_args(p: argparse.ArgumentParser, *, with_model: bool) -> None:
    lib = _library_defaults()
    choices = _choices()

    def d(name: str) -> str:
        return f" (default: {lib[name]})" if name in lib else ""

    g = p.add_argument_group("model and training (defaults: those of velopyro.VeloPyro)")
    if with_model:
        g.add_argument("--likelihood", choices=choices["likelihood"], default=lib["likelihood"],
                       help=f"observation model (default: {lib['likelihood']}; normal is on min-max scaled "
                            "Ms/Mu, the count likelihoods use the raw counts)")
        g.add_argument("--state-coupling", choices=choices["state_coupling"], default=None,
                       help="one state mixture per modality (independent, the reference) or one shared "
                            "state" + d("state_coupling"))
        g.add_argument("--pi-guide", choices=choices["pi_guide"], default=None,
                       help="variational family of the state probabilities pi" + d("pi_guide"))
        g.add_argument("--rate-init", choices=choices["rate_init"], default=None,
                       help="starting gamma / beta: one constant for all genes (auto, the default: one fit), each "
                            "gene's steady-state slope, or select (fit from both starts, keep the lower "
                            "validation loss; twice the training time)"
                            + d("rate_init"))
        g.add_argument("--batch-key", action="append", default=None, metavar="KEY",
                       help="categorical obs column of a technical covariate (batch, sample); repeat it for "
                            "several (default: none)")
        g.add_argument("--batch-effect", choices=choices["batch_effect"], default=None,
                       help="the covariate's effect on the observed mean" + d("batch_effect"))
        g.add_argument("--kinetics", choices=choices["kinetics"], default=None,
                       help="transcription kinetics registered in velopyro.kinetics: constant is veloVI's, "
                            "time_dependent lets alpha relax to alpha_1 during induction" + d("kinetics"))
        g.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                       help="cells per minibatch" + d("batch_size"))
        g.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                       help="learning rate" + d("lr"))
    g.add_argument("--max-epochs", type=_positive_int, default=None, metavar="N",
                   help="upper bound on epochs; early stopping on the validation loss ends sooner"
                        + d("max_epochs"))
    g.add_argument("--seed", type=_seed, default=lib["seed"], metavar="INT",
                   help="seed of initialisation, split and draws" + d("seed"))
    g.add_argument("--device", default=lib["device"], metavar="DEVICE",
                   help="cpu, cuda, cuda:N or auto" + d("device"))
    g.add_argument("--n-samples", type=_positive_int, default=lib["n_samples"], metavar="N",
                   help="posterior draws averaged for the outputs" + d("n_samples"))


#: The demo fits a random subsample of the bundled cells (all with --n-cells 0) to early stopping, so that it
#: converges in a few minutes on a 2-core CPU with the default one-start fit
DEMO_N_CELLS = 1000


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="veloVI RNA velocity as a Pyro program. Fit the model on an .h5ad file, or run the demo "
                    "on the bundled pancreas data.",
        epilog="Run 'velopyro COMMAND --help' for the options of a command. Set VELOPYRO_DEBUG=1 for "
               "tracebacks on errors.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser(
        "fit", help="fit velopyro on an .h5ad file and write velocity, latent time, states",
        description="Fit velopyro on IN.h5ad and write OUT.h5ad with layers velocity, velocity_u, fit_t, "
                    "fit_state; var fit_<rate> (fit_alpha, fit_beta, fit_gamma for constant kinetics), fit_t_, ...; "
                    "obs latent_time; "
                    "obsm X_velopyro; uns velopyro. Raw counts are preprocessed first (velopyro.pp."
                    "preprocess: filter, normalise, kNN moments Ms/Mu, min-max scaling, gene selection) "
                    "when the input has no Ms/Mu layers.",
    )
    fit.add_argument("input", metavar="IN.h5ad", help="input AnnData (.h5ad)")
    fit.add_argument("-o", "--output", metavar="OUT.h5ad", required=True, help="output AnnData (.h5ad)")
    lay = fit.add_argument_group("data")
    lay.add_argument("--spliced-layer", default=None,
                     help="layer with spliced abundance: the raw counts when preprocessing (default "
                          "'spliced'), else the model's input (default 'Ms', or the raw counts for count "
                          "likelihoods)")
    lay.add_argument("--unspliced-layer", default=None,
                     help="layer with unspliced abundance (default 'unspliced' / 'Mu', as for "
                          "--spliced-layer)")
    pre = lay.add_mutually_exclusive_group()
    pre.add_argument("--preprocess", dest="preprocess", action="store_const", const=True, default=None,
                     help="always preprocess the raw counts first")
    pre.add_argument("--no-preprocess", dest="preprocess", action="store_const", const=False,
                     help="never preprocess: fit the layers as they are")
    _add_training_args(fit, with_model=True)
    par = fit.add_argument_group("several processes (PyTorch Lightning; pip install 'velopyro[scale]')")
    par.add_argument("--devices", default=None, metavar="N",
                     help="train data-parallel on N devices (GPUs, or CPU processes with --accelerator cpu)")
    par.add_argument("--strategy", default=None, metavar="NAME",
                     help="Lightning strategy, e.g. ddp (one process per device; default with --devices > 1), "
                          "ddp_spawn")
    par.add_argument("--accelerator", default=None, metavar="NAME",
                     help="cpu, gpu or auto (default: from --device)")
    par.add_argument("--num-nodes", type=_positive_int, default=None, metavar="N",
                     help="machines taking part (each with --devices devices; set up by your cluster launcher)")
    ck = fit.add_argument_group("checkpoints")
    ck.add_argument("--checkpoint-dir", metavar="DIR", default=None,
                    help="save the training state to DIR/checkpoint.pt as the fit runs (atomically)")
    ck.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N",
                    help="epochs between checkpoints (default: 1)")
    ck.add_argument("--resume", metavar="DIR", default=None,
                    help="continue the interrupted fit whose checkpoint is in DIR, exactly where it stopped "
                         "(same input and options; checkpoints continue into DIR)")
    out = fit.add_argument_group("output")
    out.add_argument("--save-model", metavar="DIR", default=None,
                     help="also save the fitted model to this (new or empty) directory "
                          "(reload with velopyro.VeloPyro.load(DIR, adata))")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    fit.set_defaults(func=_cmd_fit)

    demo = sub.add_parser(
        "demo", help="run the whole pipeline on the bundled pancreas data and draw the figures",
        description="Bundled pancreas data (3,696 cells) -> preprocess -> fit -> UMAP -> figures. Writes "
                    f"DIR/{DEMO_H5AD} and DIR/" + ", DIR/".join(DEMO_FIGURES) + ".",
    )
    demo.add_argument("--out", metavar="DIR", default="velopyro_demo",
                      help="output directory (default: velopyro_demo)")
    _add_training_args(demo, with_model=False)
    demo.add_argument("--n-cells", type=_non_negative_int, default=DEMO_N_CELLS, metavar="N",
                      help=f"fit a random subsample of N of the 3,696 cells, 0 for all (default: {DEMO_N_CELLS}: "
                           "the fit converges in minutes on a laptop CPU; all cells take about four times as "
                           "long)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    demo.set_defaults(func=_cmd_demo)
    return parser


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def _fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"seed": args.seed, "device": args.device, "progress_bar": not args.quiet}
    for name in ("max_epochs", "batch_size", "lr", "checkpoint_dir", "resume", "accelerator", "strategy",
                 "num_nodes"):
        value = getattr(args, name, None)
        if value is not None:
            kw[name] = value
    if getattr(args, "devices", None) is not None:
        kw["devices"] = int(args.devices) if args.devices.lstrip("-").isdigit() else args.devices
        if getattr(args, "strategy", None) is None and kw["devices"] not in (1, "1"):
            kw["strategy"] = "ddp"
    if getattr(args, "checkpoint_dir", None) is not None or getattr(args, "resume", None) is not None:
        kw["checkpoint_every"] = args.checkpoint_every
    return kw


def _read_h5ad(path: str) -> Any:
    import anndata

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input file {str(p)!r} does not exist")
    if p.is_dir():
        raise VelopyroCliError(f"input {str(p)!r} is a directory, expected an .h5ad file")
    try:
        return anndata.read_h5ad(p)
    except (OSError, KeyError, TypeError) as err:  # not HDF5 / not an AnnData
        raise VelopyroCliError(f"cannot read {str(p)!r} as an .h5ad file ({_one_line(err)})") from err


def _prepare_output(path: str) -> Path:
    """Check the output path; nothing is created until the results are written."""
    p = Path(path)
    if p.is_dir():
        raise VelopyroCliError(f"output {str(p)!r} is a directory; give a file name such as out.h5ad")
    return p


def _check_device(device: str) -> None:
    from .train import resolve_device

    resolve_device(device)  # ValueError with a one-line message for an unknown device


class _Outputs:
    """A command's outputs (files and a model directory), staged under temporary names next to their targets
    and committed together at the very end, so that a run that fails (or is interrupted) at any step before the
    commit leaves every previous output as it was.

    The commit renames the model directory into place and then each file (``os.replace``, atomic); SIGINT is
    held off while it runs, and a failure of a later rename rolls the earlier ones back (the replaced files are
    kept as hard links, or copies, until the commit is complete).
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path, bool]] = []  # (temporary, target, is a directory)
        self.scratch: list[Path] = []  # temporary directories to remove
        self.created: list[Path] = []  # parent directories this run created (removed again if left empty)

    def _parent(self, target: Path) -> Path:
        missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        self.created.extend(missing)  # innermost first
        return target.parent

    def file(self, target: Path, write: Any) -> None:
        """Stage a file: ``write(temporary_path)`` writes it (a failure removes it and raises one line)."""
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=self._parent(target))
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)  # the permissions of a plainly created file, not mkstemp's 0600
            write(Path(tmp))
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            self.discard()
            if isinstance(err, Exception):
                raise VelopyroCliError(f"could not write {str(target)!r} ({_one_line(err)}); nothing was replaced: "
                                       "the previous file (if any) is unchanged") from err
            raise
        self.staged.append((Path(tmp), target, False))

    def model(self, target: Path, model: Any) -> None:
        """Stage a saved model directory (``model.save`` into a temporary directory next to ``target``)."""
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=self._parent(target)))
        self.scratch.append(scratch)
        try:
            model.save(scratch / "model")
        except BaseException as err:
            self.discard()
            if isinstance(err, Exception):
                raise VelopyroCliError(f"could not save the model to {str(target)!r} ({_one_line(err)}); nothing "
                                       "was written: the previous outputs (if any) are unchanged") from err
            raise
        self.staged.append((scratch / "model", target, True))

    def discard(self) -> None:
        """Remove everything staged (and the parent directories this run created, if empty)."""
        import shutil

        for tmp, _, is_dir in self.staged:
            if not is_dir:
                tmp.unlink(missing_ok=True)
        for d in self.scratch:
            shutil.rmtree(d, ignore_errors=True)
        self.staged, self.scratch = [], []
        for d in self.created:
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def commit(self) -> None:
        """Rename everything staged into place (directories first, the files last), or nothing."""
        import shutil
        import uuid

        done: list[tuple[Path, Path | None, bool]] = []
        backup: Path | None = None
        try:
            for tmp, target, is_dir in sorted(self.staged, key=lambda t: not t[2]):
                backup = None
                if is_dir:
                    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
                        raise VelopyroCliError(f"--save-model {str(target)!r} was created by another process during "
                                               "the run; nothing was written: choose a new directory")
                    if target.exists():
                        target.rmdir()
                    os.rename(tmp, target)
                else:
                    if target.exists():
                        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                        try:
                            os.link(target, backup)
                        except OSError:
                            shutil.copy2(target, backup)
                    os.replace(tmp, target)  # atomic: the target is the previous file or the new one
                done.append((target, backup, is_dir))
                backup = None
        except BaseException:
            if backup is not None:  # the link to a file that was not replaced
                backup.unlink(missing_ok=True)
            for target, backup, is_dir in reversed(done):  # roll back what was renamed
                if is_dir:
                    shutil.rmtree(target, ignore_errors=True)
                elif backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
            self.discard()
            raise
        for _, backup, _ in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self.staged, self.created = [], []
        self.discard()


def _write_h5ad(adata: Any) -> Any:
    return lambda path: adata.write_h5ad(path)


class _HoldInterrupts:
    """Hold SIGINT off while the outputs are committed and the final line is printed (main thread only):
    an interrupt then arrives after the outputs are complete, and the command reports success."""

    def __enter__(self) -> _HoldInterrupts:
        import signal
        import threading

        self.caught: list[int] = []
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, lambda signum, frame: self.caught.append(signum))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.caught and exc_type is None:  # (a failed commit was rolled back and reports its own error)
            print(f"{PROG}: interrupt received while the outputs were written; they are complete", file=sys.stderr)


def _overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths are the same or one lies inside the other."""
    pa, pb = Path(a).resolve(), Path(b).resolve()
    return pa == pb or pa in pb.parents or pb in pa.parents


def _check_paths(args: argparse.Namespace, out_path: Path) -> None:
    """Refuse outputs that would collide (checked before anything is read or fitted)."""
    for flag in ("checkpoint_dir", "resume"):
        other = getattr(args, flag, None)
        if other is not None and Path(other).resolve() == out_path.resolve():
            raise VelopyroCliError(f"-o {str(out_path)!r} is also the --{flag.replace('_', '-')} directory; give the "
                                   "output file its own name")
    if args.save_model is None:
        return
    d = Path(args.save_model)
    if _overlaps(d, out_path):
        raise VelopyroCliError(f"-o {str(out_path)!r} and --save-model {str(d)!r} overlap; give the model its own "
                               "directory, apart from the output file")
    for flag in ("checkpoint_dir", "resume"):
        other = getattr(args, flag, None)
        if other is not None and _overlaps(d, other):
            raise VelopyroCliError(f"--save-model {str(d)!r} and --{flag.replace('_', '-')} {str(other)!r} overlap "
                                   "(the checkpoints are written there during the fit); give the model its own "
                                   "directory")
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise VelopyroCliError(f"--save-model {str(d)!r} exists and is not an empty directory")


def _cmd_fit(args: argparse.Namespace) -> int:
    from . import pp
    from ._validation import check_matrix, get_layer
    from .api import VeloPyro
    from .likelihoods import LIKELIHOODS
    from .train import TrainConfig

    count = LIKELIHOODS[args.likelihood].is_count
    out_path = _prepare_output(args.output)
    _check_device(args.device)
    TrainConfig.from_options(**_fit_kwargs(args))  # every training option through the library's checks
    _check_paths(args, out_path)
    # validate what can be checked cheaply before any progress output
    adata = _read_h5ad(args.input)
    if args.batch_key is not None:  # the covariate's column checks (missing, NaN) before any preprocessing
        import warnings

        from .covariates import read_batches

        with warnings.catch_warnings():  # a single category warns once, when the model is built
            warnings.simplefilter("ignore")
            read_batches(adata, args.batch_key)
    has_moments = "Ms" in adata.layers and "Mu" in adata.layers
    do_pp = (not has_moments) if args.preprocess is None else args.preprocess
    spliced, unspliced = args.spliced_layer, args.unspliced_layer
    model_kw = {k: getattr(args, k) for k in ("state_coupling", "pi_guide", "rate_init", "batch_key", "batch_effect",
                                        "kinetics")
                if getattr(args, k) is not None}
    model = None
    if do_pp:
        half = [k for k in ("Ms", "Mu") if k in adata.layers]
        for layer, what in ((spliced or "spliced", "spliced layer"),
                            (unspliced or "unspliced", "unspliced layer")):
            if len(half) == 1 and args.preprocess is None and layer not in adata.layers and layer != "X":
                other = "Mu" if half[0] == "Ms" else "Ms"
                raise VelopyroCliError(
                    f"the input has layer {half[0]!r} but not {other!r}, and no {what} {layer!r} to compute "
                    f"both from; add layer {other!r} (velopyro.pp.moments) or the raw count layers"
                )
            check_matrix(get_layer(adata, layer, what=what), layer, shape=adata.shape)
    else:
        model = VeloPyro(adata, spliced, unspliced, likelihood=args.likelihood, **model_kw)

    steps = _Steps(4 if do_pp else 3, args.quiet)
    steps.note(f"read {args.input}: {adata.n_obs} cells x {adata.n_vars} genes"
               + ("" if do_pp else "; preprocessing skipped (the input has Ms/Mu or --no-preprocess)"))
    if do_pp:
        steps.start("preprocessing (filter, normalise, moments, scale, select genes)")
        pp.preprocess(adata, spliced_layer=spliced or "spliced", unspliced_layer=unspliced or "unspliced",
                      keep_raw_counts=count, use_existing_moments=False if args.preprocess else None,
                      random_state=args.seed)
        steps.done(f"{adata.n_obs} cells x {adata.n_vars} genes kept")
        # the model's default layers: Ms/Mu, or the raw counts kept by preprocess
        model = VeloPyro(adata, likelihood=args.likelihood, **model_kw)

    steps.start(f"fitting ({model.n_cells} cells x {model.n_genes} genes, likelihood {args.likelihood})")
    model.fit(**_fit_kwargs(args))
    h = model.history
    if h.get("interrupted"):
        raise KeyboardInterrupt  # the command line writes nothing for an interrupted fit
    steps.done(_fit_summary(h))

    steps.start(f"posterior summaries ({args.n_samples} draws)")
    model.write_to_adata(n_samples=args.n_samples, seed=args.seed)
    steps.done()

    steps.start(f"writing {out_path}")
    outputs = _Outputs()  # staged under temporary names; nothing replaced until every output is complete
    outputs.file(out_path, _write_h5ad(adata))
    if args.save_model is not None:
        outputs.model(Path(args.save_model), model)
    with _HoldInterrupts():
        outputs.commit()  # the last step: the renames, then the final line
        args.committed = True
        steps.done()
        print(f"wrote {out_path}" + (f" and the model to {args.save_model}" if args.save_model else ""), flush=True)
    return 0


def _fit_summary(h: dict) -> str:
    """One line on how training ended: converged by early stopping, or cut short at max_epochs."""
    line = f"{len(h['epoch'])} epochs, best epoch {h.get('best_epoch')}"
    if h.get("stopped_early"):
        return line + ", converged (early stopping)"
    if h.get("converged") is False:
        return line + ", NOT converged: reached --max-epochs with the validation loss still improving"
    return line


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import datasets, pl, pp, tl
    from .api import VeloPyro

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VelopyroCliError(f"--out {str(out)!r} exists and is not a directory")
    _check_device(args.device)
    from .train import TrainConfig

    TrainConfig.from_options(**_fit_kwargs(args))
    steps = _Steps(7, args.quiet)

    steps.start("loading the bundled pancreas data")
    adata = datasets.pancreas()
    n_all = adata.n_obs
    if 0 < args.n_cells < n_all:  # a seeded random subsample, before any preprocessing
        keep = np.sort(np.random.default_rng(args.seed).choice(n_all, size=args.n_cells, replace=False))
        adata = adata[keep].copy()
    steps.done(f"{adata.n_obs} of {n_all} cells x {adata.n_vars} genes")

    steps.start("preprocessing (filter, normalise, moments, scale, select genes)")
    pp.preprocess(adata, random_state=args.seed)
    steps.done(f"{adata.n_vars} genes kept")

    steps.start("fitting velopyro")
    model = VeloPyro(adata)
    model.fit(**_fit_kwargs(args))
    h = model.history
    steps.done(_fit_summary(h))

    steps.start(f"posterior summaries ({args.n_samples} draws)")
    model.write_to_adata(n_samples=args.n_samples, seed=args.seed)
    steps.done()

    steps.start("UMAP and velocity embedding")
    import scanpy as sc

    sc.tl.umap(adata, random_state=0)
    tl.velocity_embedding(adata, basis="umap")
    tl.velocity_confidence(adata)
    steps.done()

    steps.start("figures")
    from .pl._figures import _plt

    plt = _plt()  # pyplot, with the Agg backend when there is no display

    outputs = _Outputs()  # figures and AnnData staged; committed together once all are drawn and written

    def figure(draw: Any) -> Any:
        def write(path: Path) -> None:
            plt.close(draw(path))

        return write

    for name, draw in zip(DEMO_FIGURES, (
        lambda p: pl.phase_portraits(adata, save=p),
        lambda p: pl.latent_time(adata, basis="umap", save=p),
        lambda p: pl.velocity_stream(adata, basis="umap", color="clusters", save=p),
        lambda p: pl.loss_curve(model, save=p),
    ), strict=True):
        outputs.file(out / name, figure(draw))
    steps.done()

    steps.start("writing the AnnData")
    outputs.file(out / DEMO_H5AD, _write_h5ad(adata))
    with _HoldInterrupts():
        outputs.commit()
        args.committed = True
    steps.done()
    if not args.quiet:
        print(f"demo finished in {steps.total() / 60:.1f} min", file=sys.stderr)
    print(f"results in {out.resolve()}:")
    for name in (DEMO_H5AD, *DEMO_FIGURES):
        print(f"  {out / name}")
    fitted = "converged" if h.get("stopped_early") else "NOT converged (raise --max-epochs)"
    print(f"The figures show {adata.n_obs} of the {n_all} cells, fitted to the model's defaults and {fitted}"
          + ("; --n-cells 0 fits all cells." if adata.n_obs < n_all else "."))
    return 0


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


class VelopyroCliError(ValueError):
    """A user error detected by the command line itself."""


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _version() -> str:
    from . import __version__

    return __version__


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"{PROG}: warning: {_one_line(Warning(str(message)))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``velopyro`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 on an error in the input or the run, 2 on a usage error,
        130 when interrupted.
    """
    args = None
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version and usage errors
            return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        from ._validation import VelopyroInputError  # numpy, scipy, torch: Ctrl-C here is caught below
        from .train import TrainingDivergedError

        user_errors = (VelopyroInputError, VelopyroCliError, FileNotFoundError, FileExistsError, KeyError,
                       ValueError, TrainingDivergedError, OSError, ImportError)
        with warnings.catch_warnings():
            if getattr(args, "quiet", False):
                warnings.simplefilter("ignore")
            warnings.showwarning = _show_warning
            try:
                return int(args.func(args))
            except user_errors as err:
                if os.environ.get("VELOPYRO_DEBUG"):
                    raise
                print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        if getattr(args, "committed", False):  # after the outputs were renamed into place: they are complete
            print(f"{PROG}: interrupted after the outputs were written; they are complete", file=sys.stderr)
            return 0
        print(f"{PROG}: interrupted; no output was written or replaced", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
