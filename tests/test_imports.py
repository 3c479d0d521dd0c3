"""The package's internal imports: no circles, and none upward in the declared layer order.

The modules are read with ``ast`` (not imported), and every ``import`` counts: top-level, inside a
function and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "velopyro"

#: Lowest first, following the data flow AnnData -> pp -> model -> fit -> posterior -> AnnData / ArviZ /
#: figures. A module may import a module of a lower layer or of its own top-level unit (``pl._figures``
#: and ``pl._ppc`` are the unit ``pl``), never one of the same or a higher layer.
LAYERS: list[set[str]] = [
    # leaves, no velopyro import
    # leaves also: collapsed (the algebra of pi integrated out); _warn (warnings' stacklevel)
    {"__init__", "_validation", "_chunks", "kinetics", "distributions", "data", "collapsed", "_warn"},
    {"config"},  # the options and their defaults as plain data, without torch (checked by _validation)
    {"pp", "likelihoods", "nn", "coupling", "_rng", "_registry",
     "covariates"},  # preprocessing; observation models, networks,
    # state couplings; batch covariates; the components' registries by name (imported by name, never at import time)
    {"model", "guide", "datasets"},  # the Pyro program; the simulator draws from its parts
    {"checkpoint", "_scvelo", "_disk"},  # training state on disk; scVelo's per-gene statistics; data on disk
    {"train", "fitted"},  # SVI; the fitted pieces
    {"lightning"},  # SVI on several processes through Lightning
    {"posterior"},  # queries of the fitted posterior
    {"_phase"},  # reading a fitted AnnData back
    {"tl"},  # tools on a fitted AnnData (the velocity graph; api's extrinsic uncertainty uses it)
    {"uncertainty"},  # directional uncertainty and permutation scores
    {"ppc"},  # posterior predictive checks
    {"convert"},  # ArviZ
    {"api"},  # the AnnData-facing VeloPyro
    {"pl"},  # figures
    {"cli"},  # the command line
    {"__main__"},  # python -m velopyro
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Internal imports of every module: ``{module: {imported module, ...}}``."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "velopyro"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(name, is_package, node.level, node.module)
                elif node.module and node.module.split(".")[0] == "velopyro":
                    base = node.module
                else:
                    continue
                # "from . import kinetics" imports the module velopyro.kinetics; "from .x import f" imports x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    edges[name].add(t)
    return edges


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        color[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if color.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in color and (found := visit(n)):
                return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(edges):
        if m not in color and (found := visit(m)):
            return found
    return None


EDGES = _edges(_modules())


def test_the_walk_sees_the_known_imports() -> None:
    """The parser resolves relative, nested and lazy imports (a guard against a walk that sees nothing)."""
    assert "velopyro.kinetics" in EDGES["velopyro.model"]  # from . import kinetics
    assert "velopyro.likelihoods" in EDGES["velopyro.model"]  # from .likelihoods import Likelihood
    assert "velopyro.ppc" in EDGES["velopyro.pl._ppc"]  # from .. import ppc
    assert "velopyro.api" in EDGES["velopyro.cli"]  # inside a function
    assert "velopyro.pl._figures" in EDGES["velopyro.pl"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer() -> None:
    missing = sorted({_unit(m) for m in EDGES} - set(RANK))
    assert not missing, f"modules without a layer in LAYERS: {missing}; add them to tests/test_imports.py"


def test_no_import_circle() -> None:
    cycle = _cycle(EDGES)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(EDGES))
def test_no_upward_import(module: str) -> None:
    unit = _unit(module)
    upward = sorted(t for t in EDGES[module] if _unit(t) != unit and RANK[_unit(t)] >= RANK[unit])
    assert not upward, (f"{module} (layer {RANK[unit]}) imports {upward}, which are not in a lower layer "
                        "of tests/test_imports.py::LAYERS")
