"""Where a training step's time goes: a per-step profile of velopyro's SVI step (issue 33, item 4).

    python -m benchmarks.profile_step                       # pancreas, default and collapsed guides
    python -m benchmarks.profile_step --pi-guides dirichlet --steps 20 --threads 1

One training step is the loop body of :func:`velopyro.train.train_svi` (the enumerated ELBO's
``differentiable_loss``, ``backward``, gradient clipping, the AdamW step), timed here on pancreas
(``velopyro.pp.preprocess`` of the bundled data, minibatch 256, the training cells of a 90/10 split) with
the library's own model and guide. The forward pass is split by wrapping, for the duration of the profile
only, the pieces the model and guide call (times are exclusive: a wrapped piece inside another is counted
once, in the inner one):

- **networks**: the encoder of z, the head of q(pi | z) and the model's time heads (their ``forward``);
- **kinetics**: the closed-form state times and means (eq. 1-12, 16-19);
- **pi: Dirichlet sample and densities**: the reparameterised sample of q(pi | z) and the Dirichlet
  log-densities of the prior and the guide (absent with ``pi_guide="collapsed"``);
- **likelihood densities**: the per-state log-densities of u and s;
- **Pyro bookkeeping and enumeration**: the rest of the forward pass (tracing, plates, the enumeration's
  broadcasting and the contraction of the enumerated state, the ELBO's sums).

The backward pass, the gradient clipping and the optimiser step are timed as wholes, and the validation
pass of an epoch (:func:`velopyro.train.elbo_per_cell` on the held-out cells) is reported per training
step (its epoch's time divided by the steps of an epoch). Steps are interleaved over the variants; the
median over ``--steps`` steps after one warm-up step is reported. Writes
``benchmarks/results/profile_step/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE_DIR, RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "profile_step"
CACHE = CACHE_DIR / "profile_step_pancreas.h5ad"
PARTS = ("networks", "kinetics", "pi: Dirichlet sample and densities", "likelihood densities",
         "Pyro bookkeeping and enumeration", "backward", "gradient clipping", "optimiser step",
         "validation pass (per training step)")


class _Clock:
    """Exclusive wall times of nested, named sections (a stack: an inner section pauses its outer one)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list] = []  # [name, start, time spent in inner sections]

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            name, start, inner = self._stack.pop()
            spent = time.perf_counter() - start
            self.totals[name] = self.totals.get(name, 0.0) + spent - inner
            if self._stack:
                self._stack[-1][2] += spent

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.section(name):
                return fn(*args, **kwargs)

        return timed


@contextlib.contextmanager
def _patched(clock: _Clock, models: list) -> Iterator[None]:
    """Wrap the forward pieces of every model in ``models`` (and the shared classes) in ``clock``'s sections."""
    from velopyro import distributions as vdist
    from velopyro import kinetics

    undo: list[tuple[object, str, object]] = []

    def patch(obj: object, attr: str, name: str) -> None:
        if obj is None or not hasattr(obj, attr):
            return
        old = getattr(obj, attr)
        undo.append((obj, attr, obj.__dict__.get(attr, None) if isinstance(obj, type) else old))
        setattr(obj, attr, clock.wrap(name, old))

    for m in models:
        patch(m.guide.encoder, "forward", "networks")
        patch(m.guide.pi_head, "forward", "networks")
        patch(m.model.time_heads, "forward", "networks")
        patch(m.model.kinetics, "state_means", "kinetics")
    patch(kinetics, "state_times", "kinetics")
    for cls in {vdist.Dirichlet, vdist.SafeDirichlet, vdist.dist.Dirichlet}:
        patch(cls, "rsample", "pi: Dirichlet sample and densities")
        patch(cls, "log_prob", "pi: Dirichlet sample and densities")
    for cls in {vdist.Normal, vdist.Poisson, vdist.NegativeBinomial}:
        patch(cls, "log_prob", "likelihood densities")
    try:
        yield
    finally:
        for obj, attr, old in reversed(undo):
            if isinstance(obj, type) and old is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


def _data():
    import anndata as ad

    import velopyro

    if CACHE.exists():
        return ad.read_h5ad(CACHE)
    adata = velopyro.datasets.pancreas()
    velopyro.pp.preprocess(adata)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(CACHE)
    return adata


def profile(adata, pi_guides: tuple[str, ...], steps: int, batch_size: int = 256) -> dict:
    """Median seconds per part of a training step, per ``pi_guide`` (see the module docstring)."""
    import pyro
    import torch
    from pyro.infer import TraceEnum_ELBO

    import velopyro
    from velopyro import train

    models = {g: velopyro.VeloPyro(adata, pi_guide=g) for g in pi_guides}
    train_idx, val_idx = train.split_indices(adata.n_obs, 0.9, 0)
    n_train = len(train_idx)
    steps_per_epoch = int(np.ceil(n_train / batch_size))
    elbo, val_elbo = TraceEnum_ELBO(max_plate_nesting=2), TraceEnum_ELBO(max_plate_nesting=2)
    optims = {g: train._adamw(train._parameter_groups(m.model, m.guide, 1e-2), lr=1e-2, eps=0.01)
              for g, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, list[dict[str, float]]] = {g: [] for g in pi_guides}
    cpu = torch.device("cpu")
    one = torch.ones(())
    for rep in range(steps + 1):
        b = torch.as_tensor(train_idx)[torch.randperm(n_train, generator=gen)[:batch_size]]
        for g, m in models.items():
            clock = _Clock()
            m.model.train()
            m.guide.train()
            args = m.data.batch(b, cpu)
            params = [p for group in optims[g].param_groups for p in group["params"]]
            pyro.set_rng_seed(rep)
            w0 = time.perf_counter()
            with _patched(clock, [m]), clock.section("Pyro bookkeeping and enumeration"):
                loss = elbo.differentiable_loss(m.model, m.guide, *args, one, one, n_cells=n_train)
            with clock.section("backward"):
                optims[g].zero_grad(set_to_none=True)
                loss.backward()
            with clock.section("gradient clipping"):
                torch.nn.utils.clip_grad_norm_(params, 10.0)
            with clock.section("optimiser step"):
                optims[g].step()
            step_s = time.perf_counter() - w0
            if rep == steps:  # once per variant: the validation pass of an epoch, per training step
                v0 = time.perf_counter()
                train.elbo_per_cell(m.model, m.guide, m.data, val_idx, cpu, elbo=val_elbo)
                clock.totals["validation pass (per training step)"] = (time.perf_counter() - v0) / steps_per_epoch
            if rep > 0:
                rows[g].append({**clock.totals, "step": step_s})
    out = {}
    for g, rs in rows.items():
        med = {p: float(np.median([r.get(p, 0.0) for r in rs])) for p in PARTS[:-1] + ("step",)}
        med["validation pass (per training step)"] = rs[-1].get("validation pass (per training step)", 0.0)
        out[g] = med
    return {"pi_guides": out, "steps_per_epoch": steps_per_epoch, "n_train": n_train,
            "n_cells": adata.n_obs, "n_genes": adata.n_vars, "batch_size": batch_size}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write(res: dict, out: Path = OUT) -> str:
    """Write ``results.json`` and ``results.md`` under ``out``; returns the Markdown."""
    meta = res["meta"]
    lines = ["# One SVI training step on pancreas, part by part", "",
             f"`{meta['command']}` (commit {meta['commit']}, torch {meta['torch']}, {meta['threads']} thread(s), "
             f"{meta['machine']}); {res['n_cells']} cells x {res['n_genes']} genes, minibatch "
             f"{res['batch_size']}, {res['steps_per_epoch']} steps per epoch; median of {meta['steps']} steps "
             f"after one warm-up, variants interleaved. Load average (1 min) before / after: "
             f"{meta['load_before']:.2f} / {meta['load_after']:.2f}. Wall milliseconds per step and share of the "
             "step; the validation pass is an epoch's divided by its steps (not part of 'step total').", ""]
    guides = list(res["pi_guides"])
    lines += ["| part | " + " | ".join(f"{g} ms | {g} share" for g in guides) + " |",
              "|---|" + "---|---|" * len(guides)]
    for p in PARTS + ("step",):
        cells = []
        for g in guides:
            r = res["pi_guides"][g]
            cells += [f"{1e3 * r[p]:.1f}", "" if p.startswith("validation") else f"{r[p] / r['step']:.0%}"]
        lines.append(f"| {'step total' if p == 'step' else p} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pi-guides", nargs="+", default=["dirichlet", "collapsed"])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    set_threads(args.threads)
    import torch

    from benchmarks.common import quiet

    quiet()
    adata = _data()
    load_before = os.getloadavg()[0]
    res = profile(adata, tuple(args.pi_guides), args.steps)
    res["meta"] = {"command": "python -m benchmarks.profile_step" + (" " + " ".join(argv) if argv else ""),
                   "commit": _commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": args.steps,
                   "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(write(res, args.out))


if __name__ == "__main__":
    main()
