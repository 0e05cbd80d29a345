"""Debian's Chromium driven by Playwright, for the tests of the pages in a real browser: the
system browser, never a downloaded one. Importing this module skips the importing test module
when Playwright or Chromium is missing; the ``browser`` and ``shots`` fixtures are in conftest.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (./dev installs it as root)", allow_module_level=True)

FLAGS = [
    "--lang=fr-FR",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where the screenshots go when MSSANTE_SCREENSHOTS=1 (the README shows them).
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed on the way out."""
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


def new_page(browser: Any) -> Any:
    """A page in a context of its own (its own cookies), French, 1280×900.

    The demo's server certificate is issued by the demo CA, which this browser profile does not
    know: its errors are ignored for this context only (loopback, test CA)."""
    context = browser.new_context(
        ignore_https_errors=True, locale="fr-FR", viewport={"width": 1280, "height": 900}
    )
    return context.new_page()


def menu(page: Any, name: str) -> None:
    """A click on an entry of the pages' main menu (DSFR header navigation), returning once the
    page it leads to has loaded.

    Playwright's click no longer waits for the navigation it starts, and ``locator.count()`` does
    not wait either: a count taken right after the click could read the page being left (CI saw
    a patient's document list counted empty once)."""
    link = page.get_by_role("navigation", name="Menu principal").get_by_role("link", name=name, exact=True)
    with page.expect_navigation(wait_until="load"):
        link.click()
