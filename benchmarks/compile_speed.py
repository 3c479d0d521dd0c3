"""torch.compile on the pure-tensor parts of a training step, against eager and TorchScript (``jit=True``).

    python -m benchmarks.compile_speed            # writes benchmarks/results/speed/compile.{json,md}

One training step (the enumerated ELBO's forward and backward pass on a minibatch of 256 pancreas cells,
``n_cells`` = all cells) is timed for each variant, all variants interleaved step by step in one process,
the median process CPU time (and wall time) over ``--reps`` steps after ``--warmup`` warm-up rounds (which
include the compilations, timed apart). CPU time does not count waiting for a core, so it is the figure to
read on a shared machine.

Variants (each its own copy of the same initial model; Pyro's handlers stay outside every compiled region):

- ``eager``: ``TraceEnum_ELBO``, the default path.
- ``jit``: ``JitTraceEnum_ELBO`` (``torch.jit.trace`` of the whole ELBO, ``fit(jit=True)``).
- ``compile:kinetics``: ``torch.compile`` of the model's ``kinetic_state`` (time heads, eq. 16-19, and the
  closed forms, eq. 1-12).
- ``compile:networks``: the guide's encoder and q(pi | z)'s network trunk.
- ``compile:likelihood``: the Normal log-density (eq. 20-21) the enumerated sites evaluate.
- ``compile:all``: the three together (:func:`compiled_parts`).

The result (median CPU time per step, interleaved): no compiled part pays on CPU (0.96-1.02x eager, within
the noise), while compiling costs tens of seconds to minutes; TorchScript's trace of the whole ELBO
(``jit=True``) is the faster one (0.86x). velopyro therefore offers no compile option; the compiled path
lives here so that the measurement can be repeated (e.g. on a GPU, where fewer kernel launches may pay).

The enumerated contraction (the sum over the states and the plates) happens inside Pyro's
``TraceEnum_ELBO``, between its handlers, and so is not compiled here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from benchmarks.common import RESULTS_DIR, set_threads

OUT = RESULTS_DIR / "speed"
COMPILE_PARTS = ("kinetics", "networks", "likelihood")


class _CompiledNormalLogProb:
    """``velopyro.distributions.Normal.log_prob`` as one compiled function per backend (made on first use)."""

    fn: dict = {}

    @classmethod
    def get(cls, backend: str):
        import torch

        from velopyro.distributions import Normal

        if backend not in cls.fn:
            cls.fn[backend] = torch.compile(Normal.log_prob, dynamic=False, backend=backend)
        return cls.fn[backend]


def _compiled_normal_type(backend: str):
    from velopyro.distributions import Normal

    class CompiledNormal(Normal):
        """The same density; ``log_prob`` runs the compiled kernel."""

        def log_prob(self, value):
            return _CompiledNormalLogProb.get(backend)(self, value)

    return CompiledNormal


@contextlib.contextmanager
def compiled_parts(model, guide, parts: tuple[str, ...] = COMPILE_PARTS, backend: str = "inductor"):
    """Run the pure-tensor parts of a training step through ``torch.compile`` while the context is open.

    Pyro's handlers (the trace, the plates, the enumeration) stay outside every compiled region; what is
    compiled is called from inside the Pyro program:

    - ``"kinetics"``: the model's :meth:`~velopyro.model.VeloVIModel.kinetic_state` (time heads, eq. 16-19,
      and the closed forms, eq. 1-12);
    - ``"networks"``: the guide's encoder (eq. 22) and the trunk of q(pi | z)'s network;
    - ``"likelihood"``: the Normal log-density of eq. 20-21 (other likelihoods stay eager).

    The compiled callables are instance attributes that shadow the methods; leaving the context removes
    them, so saving, copying and the read-outs see the plain modules.

    Parameters
    ----------
    model, guide
        :class:`~velopyro.model.VeloVIModel` and :class:`~velopyro.guide.VeloVIGuide`.
    parts
        Which of :data:`COMPILE_PARTS` to compile.
    backend
        ``torch.compile``'s backend (``"inductor"`` generates fused C++ kernels; ``"aot_eager"`` only
        captures the graphs, a quick check that they are the eager computation).

    Yields
    ------
    None
    """
    import torch

    unknown = sorted(set(parts) - set(COMPILE_PARTS))
    if unknown:
        raise ValueError(f"unknown compile part(s) {unknown}; choose from {COMPILE_PARTS}.")
    installed: list[tuple[object, str]] = []

    def shadow(obj: object, name: str, value: object) -> None:
        object.__setattr__(obj, name, value)
        installed.append((obj, name))

    try:
        if "kinetics" in parts:
            shadow(model, "kinetic_state", torch.compile(model.kinetic_state, dynamic=False, backend=backend))
        if "networks" in parts:
            shadow(guide.encoder, "forward", torch.compile(guide.encoder.forward, dynamic=False, backend=backend))
            if getattr(guide, "pi_head", None) is not None:
                trunk = guide.pi_head.trunk
                shadow(trunk, "forward", torch.compile(trunk.forward, dynamic=False, backend=backend))
        if "likelihood" in parts and model.likelihood.name == "normal":
            lik = model.likelihood
            cls = _compiled_normal_type(backend)
            plain = lik.dist

            def dist_(mean, state, modality, size_factor=None):
                d = plain(mean, state, modality, size_factor)
                return cls(d.loc, d.scale, validate_args=False)

            shadow(lik, "dist", dist_)
        yield
    finally:
        for obj, name in reversed(installed):
            object.__delattr__(obj, name)


VARIANTS = ("eager", "jit", "compile:kinetics", "compile:networks", "compile:likelihood", "compile:all")


def _parts(variant: str) -> tuple[str, ...]:
    return {"compile:kinetics": ("kinetics",), "compile:networks": ("networks",),
            "compile:likelihood": ("likelihood",),
            "compile:all": ("kinetics", "networks", "likelihood")}.get(variant, ())


def step_times(adata, variants=VARIANTS, reps: int = 20, warmup: int = 2, batch_size: int = 256,
               pi_guide: str = "dirichlet") -> dict:
    """Per-variant lists of ``(wall, cpu)`` seconds of one training step, interleaved.

    Parameters
    ----------
    adata
        Preprocessed data (``Ms``/``Mu``).
    variants
        Names from :data:`VARIANTS`.
    reps, warmup
        Timed and warm-up rounds.
    batch_size
        Cells per minibatch.
    pi_guide
        q(pi | z) family.

    Returns
    -------
    dict
        ``{"seconds": {variant: [(wall, cpu), ...]}, "warmup_seconds": {variant: seconds}, "loss": {...}}``.
    """
    import copy

    import pyro
    import torch
    from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO

    import velopyro

    base = velopyro.VeloPyro(adata, spliced_layer="Ms", unspliced_layer="Mu", pi_guide=pi_guide)
    n = adata.n_obs
    models, elbos, ctx = {}, {}, {}
    for v in variants:
        m, g = copy.deepcopy(base.model), copy.deepcopy(base.guide)
        m.train()
        g.train()
        if v == "jit":
            m._pyro_name, g._pyro_name = f"cs_{id(m)}_model", f"cs_{id(m)}_guide"
            elbos[v] = JitTraceEnum_ELBO(max_plate_nesting=2, ignore_jit_warnings=True)
        else:
            elbos[v] = TraceEnum_ELBO(max_plate_nesting=2)
        ctx[v] = compiled_parts(m, g, _parts(v))
        ctx[v].__enter__()
        models[v] = (m, g)
    gen = torch.Generator().manual_seed(0)
    out = {v: [] for v in variants}
    warm = {v: 0.0 for v in variants}
    losses = {v: [] for v in variants}
    w = torch.ones(())  # KL and penalty weights
    try:
        for rep in range(warmup + reps):
            idx = torch.randperm(n, generator=gen)[:batch_size]
            args = base.data.batch(idx, torch.device("cpu"))
            for v in variants:
                m, g = models[v]
                pyro.set_rng_seed(rep)
                w0, c0 = time.perf_counter(), time.process_time()
                loss = elbos[v].differentiable_loss(m, g, *args, w, w, n_cells=n)
                loss.backward()
                w1, c1 = time.perf_counter(), time.process_time()
                for p in list(m.parameters()) + list(g.parameters()):
                    p.grad = None
                losses[v].append(float(loss.detach()))
                if rep < warmup:
                    warm[v] += w1 - w0
                else:
                    out[v].append((w1 - w0, c1 - c0))
    finally:
        for v in variants:
            ctx[v].__exit__(None, None, None)
    return {"seconds": out, "warmup_seconds": warm, "loss": losses}


def main(argv: list[str] | None = None) -> dict:
    """Time the variants and write ``compile.json`` and ``compile.md`` under ``benchmarks/results/speed/``.

    Parameters
    ----------
    argv
        Command-line arguments (``--reps``, ``--warmup``, ``--threads``, ``--quick``).

    Returns
    -------
    dict
        Medians per variant.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 variants, 2 steps, no files written")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    import torch

    from benchmarks import data

    adata = data.pancreas()
    variants = ("eager", "compile:likelihood") if args.quick else VARIANTS
    reps, warmup = (2, 1) if args.quick else (args.reps, args.warmup)
    res = step_times(adata, variants, reps=reps, warmup=warmup)
    wall = {v: float(np.median([w for w, _ in res["seconds"][v]])) for v in variants}
    cpu = {v: float(np.median([c for _, c in res["seconds"][v]])) for v in variants}
    load = os.getloadavg()[0]
    lines = [
        "# torch.compile on the pure-tensor parts of a training step (pancreas, batch 256)",
        "",
        f"`python -m benchmarks.compile_speed --reps {reps} --warmup {warmup} --threads {args.threads}`: "
        f"forward + backward of the enumerated ELBO on one minibatch of 256 of {adata.n_obs} cells x "
        f"{adata.n_vars} genes, torch {torch.__version__}, {torch.get_num_threads()} thread(s), variants "
        f"interleaved step by step, median of {reps} steps after {warmup} warm-up rounds (compilation "
        f"included in the warm-up column). Load average at the end: {load:.2f} on 2 cores shared with other "
        "users: read the CPU column and the ratios.",
        "",
        "| variant | CPU ms/step | vs eager (CPU) | wall ms/step | warm-up s (incl. compilation) |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        lines.append(f"| {v} | {1e3 * cpu[v]:.0f} | {cpu[v] / cpu['eager']:.2f}x | {1e3 * wall[v]:.0f} | "
                     f"{res['warmup_seconds'][v]:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "compile.json").write_text(json.dumps({"load_average_at_end": load, "threads": args.threads,
                                                      "median_cpu": cpu, "median_wall": wall, **res}, indent=1))
        (OUT / "compile.md").write_text(text)
    return {"cpu": cpu, "wall": wall}


if __name__ == "__main__":
    main()
