"""The two test tiers, for every test in the repository (tests/ and alipay_sandbox/tests/).

A fixture that starts a process is defined with `process_fixture` (alipay_sandbox/testing.py,
re-exported by tests/support.py); a test that uses one, directly or through other fixtures,
is marked `slow`, as is one marked `@pytest.mark.slow` because it runs a command itself.
`make test` runs both tiers; `make test-fast` (pytest -m "not slow") only the rest.
"""
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alipay_sandbox.testing import PROCESS_FIXTURES, process_fixture

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _chaos_first(items)


def _chaos_first(items: list[pytest.Item]) -> None:
    """The order pytest-xdist hands out test modules in (`make test` passes
    --no-loadscope-reorder): its own, the modules with the most tests first, except the chaos
    run's one test, first of all. Its two minutes then pass beside the other process's
    modules; in xdist's order it started among the last, one process running it alone."""
    from tests import test_chaos

    sizes = Counter(_scope(item) for item in items)
    items.sort(key=lambda item: (item.nodeid != test_chaos.NODE_ID, -sizes[_scope(item)]))


def _scope(item: pytest.Item) -> str:
    """The unit pytest-xdist's `--dist loadscope` gives one process: a module, or a class."""
    return item.nodeid.rsplit("::", 1)[0]


@pytest.fixture(autouse=True)
def fast_tier_starts_no_process(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the slow tier that starts a process (a command, the sandbox, a broker)
    fails and says so: mark it `@pytest.mark.slow`, and `make test-fast` stays fast."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it "
                             "@pytest.mark.slow, or define the fixture that starts it with "
                             "process_fixture")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@process_fixture(scope="session")
def browser() -> Iterator[Any]:
    """One Chromium for the whole run, for the shop's browser tests and the sandbox's alike:
    Playwright's sync API keeps an event loop in the main thread, so a second one cannot start
    while this one lives."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's Chromium at /usr/bin/chromium "
                    "(apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives the browser a fresh, throwaway profile directory.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
        )
        yield browser
        browser.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The chaos run, when selected, starts now and runs beside the rest (tests/test_chaos.py).

    Not in pytest-xdist's processes: each collects every test, but only the one given the
    chaos test may run it, and that process starts it when the test starts."""
    from tests import test_chaos

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not session.config.option.collectonly and any(
            item.nodeid == test_chaos.NODE_ID for item in session.items):
        test_chaos.chaos_start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import test_chaos

    test_chaos.chaos_stop()
