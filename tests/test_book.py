"""The course's website, built offline by ``scripts/build_book.py`` and checked page by page.

The build runs in a subprocess whose HTTP and HTTPS proxies point to a closed port, so a build
step that reached for the network would fail here. Then, on the built site:

- every lecture has its page, with its title, its launch links and its saved figures;
- every public flowlib module has an API page with documented members;
- every internal link (with its #fragment) and every image resolves to a file of the site;
- no page loads a script, style sheet, font or image from another site (no CDN);
- no widget is left for the ipywidgets JavaScript: each is drawn from its saved state;
- in headless Chromium, with every request outside the site refused, MathJax typesets the
  math of every lecture page and leaves no raw ``$$`` or ``\\(`` in the text.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
LECTURES = sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb"))
SCRIPT = ROOT / "scripts" / "build_book.py"


class _Page(HTMLParser):
    """The links, resources and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []       # <a href>
        self.resources: list[str] = []   # what the browser loads: script, style sheet, image, frame
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "link" and a.get("href") and a.get("rel", "") not in ("canonical",):
            self.resources.append(a["href"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _external(url: str) -> bool:
    """Whether a URL points to another site (an inline ``data:`` picture does not)."""
    return (bool(urlsplit(url).scheme) and not url.startswith("data:")) or url.startswith("//")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site's html/ folder; the build may not reach the network."""
    # The tools are part of the test install (requirements-dev.txt): a missing one fails, never skips.
    missing = [tool for tool in ("sphinx", "myst_nb", "sphinx-mathjax-offline", "furo")
               if importlib.util.find_spec(tool) is None]
    assert not missing, f"not installed: {missing} (pip install -r requirements-dev.txt)"
    out = tmp_path_factory.mktemp("book")
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once
    env = dict(os.environ, http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed,
               no_proxy="", NO_PROXY="")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1200)
    assert done.returncode == 0, f"the book did not build:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(done.stdout.strip())
    return out / "html"


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


def _title(notebook: Path) -> str:
    """The first markdown heading of a notebook, without its '#' marks and markup."""
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return re.sub(r"[`*_$]", "", line.lstrip("#").strip())
    raise AssertionError(f"{notebook.name} has no title")


def test_the_widget_renderer_examples() -> None:
    spec = importlib.util.spec_from_file_location("book_widgets", ROOT / "scripts" / "book_widgets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, report=False)
    assert result.attempted > 0 and result.failed == 0, result


def test_every_lecture_has_its_page(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    assert LECTURES
    for notebook in LECTURES:
        page = site / "lectures" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        text = page.read_text(encoding="utf-8")
        words = _title(notebook).split()[:4]
        plain = re.sub(r"<[^>]+>", "", text)
        assert " ".join(words) in re.sub(r"\s+", " ", plain), f"{page.name}: title {words} not found"
        assert f"lectures/{notebook.stem}.html" in index, f"the index does not link to {notebook.stem}"
        saved = sum("image/png" in o.get("data", {}) for c in json.loads(notebook.read_text())["cells"]
                    for o in c.get("outputs", []))
        assert text.count("<img") >= saved, f"{page.name}: fewer images than the notebook's {saved} figures"


def test_every_lecture_has_launch_links(site: Path) -> None:
    for notebook in LECTURES:
        text = (site / "lectures" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert re.search(rf'href="https://mybinder\.org/v2/gh/[^"]+lectures/{notebook.name}"', text), notebook
        assert re.search(rf'href="https://colab\.research\.google\.com/github/[^"]+/lectures/{notebook.name}"',
                         text), notebook


def test_every_public_module_has_an_api_page(site: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from build_book import documents_members, public_modules
    finally:
        sys.path.remove(str(SCRIPT.parent))
    modules = public_modules()
    assert "flowlib.core" in modules and "flowlib.train" in modules
    for name in modules:
        page = site / "api" / f"{name}.html"
        assert page.is_file(), f"no API page for {name}"
        documented = 'class="py ' in page.read_text(encoding="utf-8")
        assert documented or not documents_members(name), f"{name}: the API page documents nothing"
    core = (site / "api" / "flowlib.core.html").read_text(encoding="utf-8")
    assert 'id="flowlib.core.FlowModel"' in core and "change of variables" in core


def test_internal_links_and_images_resolve(site: Path) -> None:
    pages = {p: _parse(p) for p in _pages(site)}
    broken = []
    for path, page in pages.items():
        for url in page.links + page.resources:
            if _external(url) or url.startswith(("data:", "javascript:", "mailto:")):
                continue
            parts = urlsplit(url)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: {url}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {url} (no such anchor)")
    assert not broken, f"{len(broken)} broken links, e.g. {broken[:10]}"


def test_nothing_loads_from_another_site(site: Path) -> None:
    outside = [f"{p.relative_to(site)}: {url}" for p in _pages(site) for url in _parse(p).resources
               if _external(url)]
    assert not outside, outside[:10]
    for css in site.rglob("*.css"):
        assert not re.search(r"(@import|url\()\s*['\"]?(https?:)?//", css.read_text(errors="replace")), css
    assert list((site / "_static").rglob("tex-*.js")), "MathJax is not in the site"


def test_widgets_are_drawn_from_their_saved_state(site: Path) -> None:
    drawn = 0
    for notebook in LECTURES:
        text = (site / "lectures" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert "application/vnd.jupyter.widget" not in text, f"{notebook.stem}: a widget left for JavaScript"
        assert "run the notebook to see it" not in text, f"{notebook.stem}: a widget without saved state"
        assert "BEGIN HIDDEN TESTS" not in text, f"{notebook.stem}: nbgrader's hidden tests are on the page"
        drawn += text.count('class="static-widget"')
    assert drawn >= len(LECTURES), f"only {drawn} widgets drawn on {len(LECTURES)} lectures"
    first = (site / "lectures" / f"{LECTURES[1].stem}.html").read_text(encoding="utf-8")
    widget = first.split('class="static-widget"', 1)[1]
    assert 'src="data:image/png;base64,' in widget.split("static-note", 1)[0], "a widget without its image"


@pytest.mark.browser
def test_math_is_typeset_in_chromium(site: Path, browser) -> None:
    pages = [site / "index.html"] + [site / "lectures" / f"{n.stem}.html" for n in LECTURES]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    refused: list[str] = []

    def only_the_site(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_site)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        for path in pages:
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=30000)
            page.evaluate("MathJax.startup.promise")
            found = page.evaluate("""() => {
                const raw = [];
                const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
                for (let n = walker.nextNode(); n; n = walker.nextNode()) {
                    if (n.parentElement.closest('pre, code, script, style, .highlight')) continue;
                    const t = n.textContent;
                    if (['$$', '\\\\(', '\\\\[', '\\\\begin{'].some(s => t.includes(s)))
                        raw.push(t.trim().slice(0, 80));
                }
                return {typeset: document.querySelectorAll('mjx-container').length, raw: raw};
            }""")
            name = path.relative_to(site)
            assert found["typeset"] > 0, f"{name}: no formula was typeset"
            assert not found["raw"], f"{name}: raw math left in the text: {found['raw'][:3]}"
    finally:
        context.close()
    assert not refused, f"the pages asked for outside resources: {refused[:5]}"
    assert not errors, errors[:5]
