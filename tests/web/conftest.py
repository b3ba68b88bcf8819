"""The production web process (the Procfile's gunicorn with uvicorn workers) on the test
database and broker, for tests of what only that stack does."""
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ManagedProcess, free_port, procfile_command, wait_for_port


@pytest.fixture(scope="session")
def asgi_web(worker_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = free_port()
    # The settings' own defaults otherwise: development mode, DEBUG off, local host names.
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "PAYMENT_STATUS_WAIT": "5"}
    web = ManagedProcess("asgi-web", procfile_command("web"), env, log_dir).start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    web.stop()
