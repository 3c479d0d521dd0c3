"""Sphinx configuration of velopyro's documentation (``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's velopyro, and benchmarks/ for the generated tables

import velopyro  # noqa: E402

project = "velopyro"
author = "velopyro contributors"
copyright = "velopyro contributors"  # noqa: A001
release = version = velopyro.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from the built site: equations render without a network
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
]

# the tutorials' notebooks live in tutorials/ (next to the code) and are copied into docs/tutorials/ at build
# time (_generate, below); benchmark pages include the files under benchmarks/results/ directly
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = root_doc = "index"

# notebooks are rendered from their stored outputs; nothing is executed at build time
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = True
autosummary_ignore_module_all = False

# the summary tables cut a docstring at its first ". "; the equation references "(eq. 20-21)" are not a
# sentence end (autosummary reads this tuple when it extracts each summary)
import sphinx.ext.autosummary as _autosummary  # noqa: E402

_autosummary.WELL_KNOWN_ABBREVIATIONS = (*_autosummary.WELL_KNOWN_ABBREVIATIONS, "eq.", "eqs.")
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections give the types
numpydoc_show_class_members = False  # the class template lists the methods, each on its own page
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_inherit_docstrings = False  # overridden Lightning and torch methods would show their docs (in their own markup)

intersphinx_mapping = {}  # the build runs offline; no inventories are fetched

html_theme = "pydata_sphinx_theme"
html_title = f"velopyro {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_sidebars = {"index": [], "getting_started": [], "benchmarks": []}  # pages with no section to navigate
html_show_sourcelink = False


# ---------------------------------------------------------------------------------------------------------
# generated inputs (not committed): the tutorials' notebooks and the headline table of the benchmarks page
def _generate(app) -> None:  # noqa: ANN001 - Sphinx's application object
    import shutil

    from benchmarks.readme_table import table

    docs = Path(app.srcdir)
    generated = docs / "_generated"
    generated.mkdir(exist_ok=True)
    (generated / "headline_table.md").write_text(table(links=False, markers=False))
    # the notebooks live in tutorials/ next to the code; Sphinx reads sources inside docs/ only
    target = docs / "tutorials"
    target.mkdir(exist_ok=True)
    for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
        dest = target / nb.name
        if not dest.exists() or dest.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, dest)


def setup(app) -> None:  # noqa: ANN001
    app.connect("builder-inited", _generate)
