"""Headless Chromium for the browser tests (JupyterLab's widgets, the website's math), one setup.

Chromium comes from the system's packages (``apt-get install chromium``, at ``/usr/bin/chromium``
or on PATH); playwright drives it and never downloads a browser build. The fixtures skip, with the
reason, where either is missing, and fail instead where ``FLOWLIB_REQUIRE_BROWSER`` is set (CI).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
# Headless and quiet: no GPU, no sandbox (CI runs as root), and nothing that calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing_browser_tools() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (requirements-dev.txt installs it)"
    if not Path(CHROMIUM).is_file():
        return "Chromium is not installed (apt-get install chromium; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
def browser_tools() -> None:
    """Skip when Chromium or playwright is missing; fail instead where FLOWLIB_REQUIRE_BROWSER is
    set (CI sets it: there a missing browser is a broken install, not a reason to skip)."""
    missing = missing_browser_tools()
    if missing:
        if os.environ.get("FLOWLIB_REQUIRE_BROWSER"):
            pytest.fail(f"FLOWLIB_REQUIRE_BROWSER is set, but {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def browser(browser_tools: None) -> Iterator[Browser]:
    """One headless Chromium per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
