"""The browser tests' fixtures and helpers: a real Chromium driven by Playwright against the live
web app, the sandbox and workers. The fixtures reach every test through tests/conftest.py; the
browser tests live with the pages they test (tests/shop/, tests/backoffice/)."""
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from shop.models import User
from tests.factories import UserFactory
from tests.support import ROOT

SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
DESKTOP, PHONE = 1280, 390
TABLETS = (1024, 800, 769, 768)  # checked for overflow too, on both sides of the phone layout

# Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def reconciliation_out_of_the_way(settings: Any) -> None:
    """Pay links issued here are not reconciled during the test, so each path stands alone."""
    settings.RECONCILE_AFTER_SECONDS = 3600.0


@pytest.fixture
def page(browser: Any, reconciliation_out_of_the_way: None) -> Iterator[Any]:
    """A page in its own context: no cookies or storage shared between tests."""
    context = browser.new_context(viewport={"width": DESKTOP, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


# The header's parts, each with its box and how many lines its text takes.
HEADER_ITEMS = """() => Array.from(document.querySelectorAll(
    '.topbar .brand, .topbar nav > a, .topbar nav > .who, .topbar nav button')).map(el => {
  const box = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.2;
  return {text: el.textContent.trim(), left: box.left, right: box.right, top: box.top,
          bottom: box.bottom, lines: Math.round(box.height / line)};
})"""


def assert_header_readable(page: Any, width: int) -> None:
    """Every link of the header on one line, inside the viewport, apart from its neighbours."""
    items = page.evaluate(HEADER_ITEMS)
    assert items, "no header"
    for item in items:
        assert item["lines"] == 1, f"{item['text']!r} wraps at {width} px"
        assert 0 <= item["left"] and item["right"] <= width, f"{item['text']!r} is cut off"
    for i, first in enumerate(items):
        for second in items[i + 1:]:
            same_line = first["top"] < second["bottom"] and second["top"] < first["bottom"]
            if same_line:
                gap = max(second["left"] - first["right"], first["left"] - second["right"])
                assert gap >= 8, f"{first['text']!r} and {second['text']!r} touch ({gap} px)"


@pytest.fixture
def snap(page: Any, screenshots: Path) -> Callable[[str], None]:
    """Check the page from desktop to phone width; save a screenshot at each end.

    No horizontal overflow at any of the widths (the document is no wider than the viewport)
    and, on the shop's pages, a readable header; then back to the width the test was using.
    """
    def at_both_widths(name: str) -> None:
        original = page.viewport_size
        for width in (DESKTOP, *TABLETS, PHONE):
            page.set_viewport_size({"width": width, "height": 800})
            document_width = page.evaluate("document.documentElement.scrollWidth")
            assert document_width <= width, (
                f"{name}: the page is {document_width} px wide in a {width} px viewport")
            if page.locator(".topbar").count():
                assert_header_readable(page, width)
            if width in (DESKTOP, PHONE):
                page.screenshot(path=screenshots / f"{name}_{width}.png", full_page=True)
        page.set_viewport_size(original)

    return at_both_widths


PASSWORD = "s3cret-pass"
Snap = Callable[[str], None]  # the `snap` fixture: checks both widths, saves screenshots


def sign_in(page: Any, web: str, username: str) -> User:
    """A new buyer, signed in through the storefront's sign-in page."""
    user = UserFactory(username=username, password=PASSWORD)
    page.goto(f"{web}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#sign-in")
    expect(page.locator("#signed-in-as")).to_have_text(username)
    return user
