"""Build the course's website: every lecture with its saved outputs, and flowlib's API reference.

    python scripts/build_book.py                 # -> book/_build/html/index.html
    python scripts/build_book.py --out DIR       # -> DIR/html/index.html

Sphinx with MyST-NB (pinned in requirements-dev.txt) renders the committed notebooks as they
are: nothing is executed (``nb_execution_mode = "off"``), so the pages show exactly the outputs
that nbval checks. Before Sphinx sees them, each notebook is copied into a staging folder and
changed in four ways only:

- every widget output becomes static HTML drawn from the widget state the notebook saved
  (``scripts/book_widgets.py``): the picture and the controls as they were last seen, with no
  ipywidgets JavaScript (it would come from a CDN);
- a line of launch links goes under the title: Binder (the course's own environment), Colab
  (after installing flowlib there), and the notebook's source;
- the saved widget state is dropped from the metadata (already drawn);
- nbgrader's hidden tests (``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``) are cut out
  of the graded cells: they are for the autograder, not for the page.

The API reference has one page per public flowlib module (``automodule`` of the members the
module defines; a package's page is its docstring), from the docstrings. Math is typeset by
MathJax 3 from files copied into the site (sphinx-mathjax-offline): the site needs no network,
and neither does the build.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_widgets import WIDGET_STATE, WIDGET_VIEW, is_progress_bar, static_widget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
LECTURES = ROOT / "lectures"
#: Modules kept only for old imports: their pages say so and point to the new home, nothing more.
DEPRECATED = {"flowlib.image_widgets"}


def repository() -> str:
    """``OWNER/REPO`` of the course on GitHub, from pyproject.toml's ``[project.urls]``."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    url = urls["Repository"].rstrip("/")
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise SystemExit(f"build_book: expected [project.urls] Repository = {prefix}OWNER/REPO, got {url}")
    return url[len(prefix):]


def launch_links(notebook: str, repo: str) -> str:
    """The markdown line of launch links of ``lectures/<notebook>``."""
    binder = f"https://mybinder.org/v2/gh/{repo}/HEAD?urlpath=lab/tree/lectures/{notebook}"
    colab = f"https://colab.research.google.com/github/{repo}/blob/main/lectures/{notebook}"
    source = f"https://github.com/{repo}/blob/main/lectures/{notebook}"
    return (f"**Run this lecture:** [on Binder]({binder}) (the course's environment, nothing to install) "
            f"| [on Colab]({colab}) (first run `%pip install git+https://github.com/{repo}` in a cell) "
            f"| [the notebook]({source})")


def static_notebook(nb: dict, notebook: str, repo: str) -> tuple[dict, int]:
    """A copy of notebook ``nb`` for the site, and the number of widget outputs drawn statically."""
    nb = copy.deepcopy(nb)
    state = nb.get("metadata", {}).pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    drawn = 0
    for cell in nb["cells"]:
        source = "".join(cell.get("source", ""))
        if "### BEGIN HIDDEN TESTS" in source:  # nbgrader's hidden tests stay out of the public pages
            head, _, rest = source.partition("### BEGIN HIDDEN TESTS")
            cell["source"] = head.rstrip() + "\n" + rest.partition("### END HIDDEN TESTS")[2].lstrip("\n")
        for i, output in enumerate(cell.get("outputs", [])):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            model_id = view["model_id"]
            body = static_widget(model_id, state)
            if not body:  # no saved state (a widget closed before saving): say so, once
                body = "<em>(a widget: run the notebook to see it)</em>"
            elif not is_progress_bar(model_id, state):
                body = (f'<div class="static-widget">{body}<p class="static-note">A widget, as it was '
                        "last drawn: run the lecture to move its controls.</p></div>")
            cell["outputs"][i] = {"output_type": "display_data", "metadata": {},
                                  "data": {"text/html": body}}
            drawn += 1
    links = {"cell_type": "markdown", "metadata": {}, "source": launch_links(notebook, repo)}
    first = nb["cells"][0] if nb["cells"] else {}
    title = "".join(first.get("source", "")).lstrip()
    titled = first.get("cell_type") == "markdown" and title.startswith("#")
    at = 1 if titled else 0
    nb["cells"].insert(at, links)
    return nb, drawn


def public_modules() -> list[str]:
    """flowlib's public modules (no leading underscore anywhere in the dotted name), sorted."""
    names = []
    for path in sorted((ROOT / "flowlib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return names


def documents_members(name: str) -> bool:
    """Whether module ``name``'s API page lists its members. A package's page (and a deprecated
    module's) is its docstring: the names it re-exports are documented where they are defined."""
    return not (ROOT / name.replace(".", "/") / "__init__.py").is_file() and name not in DEPRECATED


def api_pages(folder: Path) -> None:
    folder.mkdir(parents=True)
    modules = public_modules()
    for name in modules:
        title = f"``{name}``"
        members = "   :members:\n   :ignore-module-all:\n   :show-inheritance:\n"
        options = members if documents_members(name) else ""
        page = f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n{options}"
        (folder / f"{name}.rst").write_text(page)
    toc = "\n".join(f"   {name}" for name in modules)
    (folder / "index.rst").write_text(
        "API reference\n=============\n\nEvery public module of ``flowlib``, from its docstrings: the "
        "formula, "
        "the paper, and a short example that the test suite runs (``python -m doctest`` works on any "
        f"module too).\n\n.. toctree::\n   :maxdepth: 1\n\n{toc}\n")


def stage(staging: Path) -> dict[str, int]:
    """Fill ``staging`` with Sphinx's sources; returns {lecture: widget outputs drawn}."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(BOOK, staging, ignore=shutil.ignore_patterns("_build", "__pycache__"))
    repo = repository()
    drawn = {}
    (staging / "lectures").mkdir()
    for path in sorted(LECTURES.glob("[0-9][0-9]_*.ipynb")):
        nb, drawn[path.stem] = static_notebook(json.loads(path.read_text(encoding="utf-8")), path.name, repo)
        (staging / "lectures" / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False),
                                                      encoding="utf-8")
    api_pages(staging / "api")
    return drawn


def build(out: Path) -> float:
    """Build the site into ``out / "html"``; returns the seconds it took. Raises on failure."""
    start = time.perf_counter()
    out = out.resolve()
    drawn = stage(out / "src")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    log = out / "sphinx-warnings.log"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-w", str(log),
                           str(out / "src"), str(html)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, FLOWLIB_BOOK_ROOT=str(ROOT)))
    if done.returncode != 0:
        raise SystemExit(f"build_book: sphinx-build failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    seconds = time.perf_counter() - start
    warnings = [ln for ln in log.read_text().splitlines() if "WARNING" in ln or "ERROR" in ln]
    print(f"built {html / 'index.html'} in {seconds:.0f} s: {len(drawn)} lectures, "
          f"{sum(drawn.values())} widget outputs drawn from their saved state, "
          f"{len(warnings)} Sphinx warnings (in {log})")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=BOOK / "_build", help="build folder (html/ goes inside)")
    build(p.parse_args(argv).out)


if __name__ == "__main__":
    main()
