"""The lectures' widgets in a real browser: JupyterLab in headless Chromium, driven by Playwright.

The widget tests in ``tests/test_widgets.py`` drive the widgets from Python. This test checks
what a student sees: for every lecture that shows a widget from ``flowlib.widgets`` or
``flowlib.image_widgets``, it

1. opens the lecture in JupyterLab (a server of its own on 127.0.0.1, a free port, a token)
   and runs all its cells, with ``CI=true`` in the kernel's environment so training is short;
2. requires that every cell ran without error;
3. for each widget on the page: waits for its image, requires that it fits the notebook column
   (no part of it wider than its output area, none past the right edge of the notebook panel,
   nothing to scroll sideways), moves its first visible slider with the keyboard (the focused
   slider handle takes arrow and page keys), and requires the rendered image to change (a hash
   of its pixels) and the slider's value to move;
4. saves a screenshot of each widget to ``screenshots/`` (git-ignored), to look at;
5. requires that the browser console showed no error and the page threw no exception.

The window is the one a student on a laptop has: 1280x800, with JupyterLab's file browser open
on the left (the notebook column is then about 950 px wide, its output area about 850 px).

Needs Chromium (``apt-get install chromium``, at ``/usr/bin/chromium`` or on PATH) and the
``playwright`` Python package; it never downloads a browser (no ``playwright install``).
It is skipped, with the reason, when either is missing.

JupyterLab must not change the lectures: autosave is off (settings in a temporary folder),
checkpoints go to a temporary folder, and the test fails if the page sends any request that
writes through the contents API (a save, a rename, a delete).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "screenshots"

#: Console errors that say nothing about the course. Each entry: (pattern, why it is harmless).
BENIGN_CONSOLE_ERRORS: list[tuple[re.Pattern[str], str]] = [
    # A browser asks every site for /favicon.ico; a 404 there is not an error of the page.
    (re.compile(r"favicon\.ico"), "the browser's own favicon request"),
]



def _shows_widgets(notebook: Path) -> bool:
    """Whether a lecture's code imports one of flowlib's widget modules."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.search(r"^\s*(from|import) flowlib\.(image_)?widgets\b", code, re.M) is not None


WIDGET_LECTURES = [p for p in sorted((REPO / "lectures").glob("[0-9][0-9]_*.ipynb")) if _shows_widgets(p)]

SERVER_START_S = 90
RUN_ALL_S = 300  # one lecture, all cells, under CI=true, on a busy 2-core machine
WIDGET_UPDATE_S = 60
#: A laptop's window; the file browser stays open beside the notebook (see lab_page).
VIEWPORT = {"width": 1280, "height": 800}


if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Request


# ----------------------------------------------------------------------------------------
# JupyterLab, on a free port of 127.0.0.1
# ----------------------------------------------------------------------------------------
@dataclass
class Lab:
    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_settings(folder: Path) -> Path:
    """User settings for this server only: no autosave (the lectures must stay as committed),
    and every cell in the page (no windowing), so each widget can be found and shown."""
    settings = {
        "docmanager-extension/plugin": '{"autosave": false}',
        "notebook-extension/tracker": '{"windowingMode": "none"}',
        "apputils-extension/notification": '{"fetchNews": "false", "checkForUpdates": false}',
    }
    for name, text in settings.items():
        path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture(scope="module")
def lab(browser_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("jupyterlab")
    token, port = secrets.token_hex(16), _free_port()
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}  # the inline backend
    env.update(
        CI="true",  # the lectures shorten their training
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),  # no user config; the environment's still applies
        JUPYTERLAB_SETTINGS_DIR=str(_lab_settings(tmp / "settings")),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        PYTHONUNBUFFERED="1",
    )
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}",
        f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}",  # not lectures/.ipynb_checkpoints
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands from the test
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = tmp / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, process, log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server we started (it shuts its kernels down); kill its process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# ----------------------------------------------------------------------------------------
# Chromium, one page kept for all lectures (JupyterLab loads once)
# ----------------------------------------------------------------------------------------
@dataclass
class Console:
    """Everything the page reported as an error, and every request that would change a file."""

    errors: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    contents_requests: int = 0  # all of them, to know the listener works

    def on_request(self, request: Request) -> None:
        self.contents_requests += "/api/contents/" in request.url
        # Saving, renaming or deleting goes through the contents API with one of these methods
        # (a checkpoint is a POST to .../checkpoints, kept in a temporary folder: allowed).
        if "/api/contents/" in request.url and request.method in ("PUT", "PATCH", "DELETE"):
            self.writes.append(f"{request.method} {request.url.split('?')[0]}")

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.errors.append(f"console.error: {message.text} ({where})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught exception: {error}")

    def unexplained(self, start: int = 0) -> list[str]:
        return [e for e in self.errors[start:] if not any(p.search(e) for p, _ in BENIGN_CONSOLE_ERRORS)]


@pytest.fixture(scope="module")
def lab_page(lab: Lab, browser: Browser) -> Iterator[tuple[Page, Console]]:
    page = browser.new_page(viewport=VIEWPORT)
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    page.on("request", console.on_request)
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.wait_for_function("window.jupyterapp !== undefined", timeout=SERVER_START_S * 1000)
    page.evaluate("() => window.jupyterapp.restored")
    # The file browser open, as a student has it: the widgets must fit the narrower column.
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    page.wait_for_function(LEFT_PANEL_OPEN, timeout=10_000)
    # The listeners must see an error when there is one: a silent console proves nothing otherwise.
    page.evaluate("() => console.error('browser-test self-check')")
    page.evaluate("() => setTimeout(() => { throw new Error('browser-test self-check'); })")
    page.wait_for_timeout(200)
    seen = [e.split(":")[0] for e in console.errors if "browser-test self-check" in e]
    assert {"console.error", "uncaught exception"} <= set(seen), console.errors
    console.errors.clear()
    yield page, console
    page.close()


# ----------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------
OPEN_NOTEBOOK = """async (path) => {
    const app = window.jupyterapp;
    if (window.__panel) window.__panel.dispose();  // the previous lecture, closed unsaved (no dialog)
    const panel = await app.commands.execute('docmanager:open', {path});
    window.__panel = panel;
    await panel.context.ready;
    await panel.sessionContext.ready;
    app.shell.activateById(panel.id);
}"""

KERNEL_IDLE = "() => window.__panel.sessionContext.session?.kernel?.status === 'idle'"

LEFT_PANEL_OPEN = """() => !window.jupyterapp.shell.leftCollapsed
    && document.querySelector('#filebrowser')?.getBoundingClientRect().width > 100"""

#: Where a widget sits: its output area, the notebook panel, the widget's own box, and the
#: rightmost edge of anything visible inside it (a slider, a row of buttons, the picture).
WIDGET_LAYOUT = """(output) => {
    const box = e => {
        const b = e.getBoundingClientRect();
        return {left: b.left, right: b.right, width: b.width};
    };
    const panel = output.closest('.jp-NotebookPanel');
    const widget = output.querySelector('.jupyter-widgets');
    let widest = {right: -Infinity, what: ''};
    for (const e of [widget, ...widget.querySelectorAll('*')]) {
        const b = e.getBoundingClientRect();
        if (b.width > 0 && b.height > 0 && b.right > widest.right) {
            widest = {right: b.right, what: `${e.tagName.toLowerCase()}.${[...e.classList].join('.')}`};
        }
    }
    return {output: box(output), panel: box(panel), widget: box(widget), widest,
            overflow: output.scrollWidth - output.clientWidth,
            browserOpen: !window.jupyterapp.shell.leftCollapsed};
}"""

RUN_ALL = """() => {
    const app = window.jupyterapp;
    window.__runAll = null;
    app.commands.execute('notebook:clear-all-cell-outputs');  // the saved outputs are not the test
    app.commands.execute('notebook:run-all-cells').then(
        ok => { window.__runAll = {ok}; }, error => { window.__runAll = {error: String(error)}; });
}"""

CELL_ERRORS = """() => {
    const found = [];
    const cells = window.__panel.content.model.cells;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        for (let j = 0; j < cell.outputs.length; j++) {
            const output = cell.outputs.get(j).toJSON();
            if (output.output_type === 'error') found.push(`cell ${i}: ${output.ename}: ${output.evalue}`);
        }
        if (cell.executionCount === null) found.push(`cell ${i}: not run`);
    }
    return found;
}"""


def _fit_viewport(page: Page, view: Locator) -> None:
    """Make the window tall enough to show the whole widget, then scroll to it.

    An element screenshot shows only what is on screen: a widget taller than the window
    (Glow's grid of 100 samples) would be cut, and its hash would miss part of the picture.
    """
    view.scroll_into_view_if_needed()
    height = view.bounding_box()["height"]
    needed = int(height) + 400  # JupyterLab's menus and toolbars above the notebook
    if needed > page.viewport_size["height"]:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": needed})
        page.wait_for_timeout(300)  # JupyterLab lays the page out again
    view.scroll_into_view_if_needed()


def _check_fits(view: Locator, where: str) -> None:
    """The widget is no wider than its output area and ends left of the notebook panel's edge."""
    layout = view.evaluate(WIDGET_LAYOUT)
    output, panel, widget, widest = layout["output"], layout["panel"], layout["widget"], layout["widest"]
    assert layout["browserOpen"], f"{where}: the file browser was closed; the test measures with it open"
    assert widget["width"] <= output["width"] + 1, (
        f"{where}: the widget is {widget['width']:.0f} px wide, its output area {output['width']:.0f} px")
    assert widest["right"] <= output["right"] + 1, (
        f"{where}: {widest['what']} ends at x = {widest['right']:.0f}, right of the output area's edge "
        f"({output['right']:.0f})")
    assert widest["right"] <= panel["right"], (
        f"{where}: {widest['what']} ends at x = {widest['right']:.0f}, past the notebook panel "
        f"({panel['right']:.0f})")
    assert layout["overflow"] <= 1, f"{where}: the output area scrolls sideways by {layout['overflow']} px"


def _pixels_hash(png: bytes) -> str:
    return hashlib.sha256(png).hexdigest()


def _wait_for_image(page: Page, image: Locator, timeout_s: float) -> None:
    """Until the <img> holds a decoded picture."""
    deadline = time.monotonic() + timeout_s
    while not image.evaluate("img => img.complete && img.naturalWidth > 0"):
        if time.monotonic() > deadline:
            raise AssertionError("the widget's image never loaded")
        page.wait_for_timeout(200)


def _wait_until_settled(page: Page, image: Locator, old_src: str | None, timeout_s: float) -> None:
    """Until the image has been replaced (new ``src``) and then stays the same for a second."""
    deadline = time.monotonic() + timeout_s
    last, since = image.get_attribute("src"), time.monotonic()
    while True:
        page.wait_for_timeout(250)
        src = image.get_attribute("src")
        if src != last:
            last, since = src, time.monotonic()
        idle = page.evaluate(KERNEL_IDLE)
        if src != old_src and idle and time.monotonic() - since > 1.0:
            _wait_for_image(page, image, timeout_s)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the widget's image did not change within {timeout_s} s of a slider move")


def test_lectures_with_widgets_are_found() -> None:
    names = [p.name[:2] for p in WIDGET_LECTURES]
    assert {"01", "02"} <= set(names), f"lectures 01 and 02 show widgets; found only {names}"


@pytest.mark.parametrize("lecture", WIDGET_LECTURES, ids=lambda p: p.stem)
def test_widgets_respond_in_jupyterlab(lab_page: tuple[Page, Console], lecture: Path) -> None:
    page, console = lab_page
    try:
        _check_widgets(page, console, lecture)
    except BaseException:
        SCREENSHOTS.mkdir(exist_ok=True)  # what the page looked like, for the person who reads the failure
        page.screenshot(path=str(SCREENSHOTS / f"{lecture.stem}-FAILED.png"))
        raise
    finally:
        # Free the CPU for the next lecture: shut this notebook's kernel down.
        page.evaluate("() => window.__panel?.sessionContext.shutdown()")


def _check_widgets(page: Page, console: Console, lecture: Path) -> None:
    first_message = len(console.errors)
    path = lecture.relative_to(REPO).as_posix()

    page.evaluate(OPEN_NOTEBOOK, path)
    page.wait_for_function(KERNEL_IDLE, timeout=SERVER_START_S * 1000, polling=250)
    page.evaluate(RUN_ALL)
    page.wait_for_function("() => window.__runAll !== null", timeout=RUN_ALL_S * 1000, polling=500)
    result = page.evaluate("() => window.__runAll")
    errors = page.evaluate(CELL_ERRORS)
    assert result == {"ok": True} and not errors, f"{path}: run all failed: {result}\n" + "\n".join(errors)

    # One output per widget: the assembled box shows the figure as an <img> (ipywidgets.Image).
    views = page.locator(".jp-OutputArea-output").filter(has=page.locator("img.widget-image"))
    count = views.count()
    assert count > 0, f"{path}: the lecture imports a widget module but no widget was displayed"
    SCREENSHOTS.mkdir(exist_ok=True)
    for k in range(count):
        view = views.nth(k)
        _fit_viewport(page, view)
        image = view.locator("img.widget-image").first
        _wait_for_image(page, image, WIDGET_UPDATE_S)
        _check_fits(view, f"{path}, widget {k}")
        before_pixels = _pixels_hash(image.screenshot())
        before_src = image.get_attribute("src")

        handles = [h for h in view.locator(".noUi-handle").all() if h.is_visible()]
        assert handles, f"{path}, widget {k}: no visible slider"
        handle = handles[0]
        value = handle.get_attribute("aria-valuenow")
        key = "PageDown" if value == handle.get_attribute("aria-valuemax") else "PageUp"
        handle.focus()
        for _ in range(2):
            handle.press(key)  # PageUp: five steps of the slider
        assert handle.get_attribute("aria-valuenow") != value, f"{path}, widget {k}: the slider did not move"

        _wait_until_settled(page, image, before_src, WIDGET_UPDATE_S)
        after_pixels = _pixels_hash(image.screenshot())
        view.screenshot(path=str(SCREENSHOTS / f"{lecture.stem}-widget{k + 1}.png"))
        assert after_pixels != before_pixels, f"{path}, widget {k}: the picture did not change"

    assert console.contents_requests > 0, "no request to the contents API was seen: is the listener on?"
    assert not console.writes, f"{path}: JupyterLab tried to change files: {console.writes}"
    unexplained = console.unexplained(first_message)
    assert not unexplained, f"{path}: the browser reported errors:\n" + "\n".join(unexplained)
