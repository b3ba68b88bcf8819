"""The two test tiers, for every test in the repository (tests/ and alipay_sandbox/tests/).

A fixture that starts a process is defined with `process_fixture` (alipay_sandbox/testing.py,
re-exported by tests/support.py); a test that uses one, directly or through other fixtures,
is marked `slow`, as is one marked `@pytest.mark.slow` because it runs a command itself.
`make test` runs both tiers; `make test-fast` (pytest -m "not slow") only the rest.
"""
import subprocess
from typing import Any

import pytest

from alipay_sandbox.testing import PROCESS_FIXTURES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
