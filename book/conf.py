"""Sphinx configuration of the course's website; build it with ``python scripts/build_book.py``.

The sources Sphinx reads are a staging copy that the build script writes (the lectures with their
widgets drawn statically, the API pages); this file and ``index.md`` are copied there unchanged.
"""

import os
from pathlib import Path

import tomllib

# The build script says where the repository is (the staging folder may be anywhere).
_root = Path(os.environ.get("FLOWLIB_BOOK_ROOT", Path(__file__).resolve().parents[1]))
_meta = tomllib.loads((_root / "pyproject.toml").read_text())["project"]

project = "Normalizing flows: an interactive course"
author = "the flowlib course authors"
release = version = _meta["version"]
copyright = "2026, the flowlib course authors (MIT licence)"

extensions = [
    "myst_nb",                  # notebooks and MyST markdown
    "sphinx.ext.autodoc",       # the API reference from flowlib's docstrings
    "sphinx.ext.napoleon",      # their "Args:" sections
    "sphinx.ext.viewcode",      # links from the reference to the highlighted source
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",   # MathJax 3 copied into the site: no CDN
]

# The committed outputs are the course: never re-run a notebook while building.
nb_execution_mode = "off"
nb_output_stderr = "show"
myst_enable_extensions = ["dollarmath"]  # not amsmath: it would take a \\begin{pmatrix} inside $$ for a block
myst_dmath_double_inline = True  # $$...$$ inside a paragraph, as JupyterLab shows it
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "Normalizing flows"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_show_sourcelink = False


# -- flowlib's docstrings are plain text with formulas ---------------------------------------------
# They write |det J| and indent a formula under its sentence, as a reader of the source expects. In
# reStructuredText |x| is a substitution and an indented block a quotation, so, before Sphinx parses
# a docstring: a formula block (indented deeper than the text before it, not after "::", not a
# doctest) becomes a literal block, shown as written; and "|" in running text is escaped.
def _plain_formulas(app, what, name, obj, options, lines: list[str]) -> None:
    out: list[str] = []
    literal_indent = None  # the indentation of the text that opened a literal block (after "::")
    prose_indent = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if stripped and indent <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                continue
        if not stripped:
            out.append(line)
            continue
        previous = next((ln for ln in reversed(out) if ln.strip()), "")
        starts_block = i > 0 and not lines[i - 1].strip() and indent > prose_indent
        if starts_block and not stripped.startswith((">>>", "...", "- ", "* ", "=")) \
                and not previous.rstrip().endswith("::"):
            out[-1:] = ["", " " * prose_indent + "::", ""]  # open a literal block for the formula
            literal_indent = prose_indent
            out.append(line)
            continue
        if previous.rstrip().endswith("::") and not lines[i - 1].strip():
            literal_indent = prose_indent
            out.append(line)
            continue
        if not stripped.startswith((">>>", "...")):
            prose_indent = indent
            line = line.replace("|", r"\|")
        out.append(line)
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", _plain_formulas)
