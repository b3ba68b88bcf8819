"""Fixtures for the sandbox's own tests: no Django, no database, one sandbox process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.client import SandboxControl
from alipay_sandbox.testing import (
    SandboxProcess,
    clear_proxy_env,
    load_public_key,
    process_fixture,
    start_sandbox,
)
from tests.sandbox.support import NotifyReceiver, make_client

clear_proxy_env()


@pytest.fixture(scope="session")
def sbx_keys(dev_keys: Path) -> Path:
    """The project-wide throwaway keys (tests/conftest.py), under the sandbox tests' name."""
    return dev_keys


@process_fixture(scope="session")
def sbx_process(
    sbx_keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxProcess]:
    store = tmp_path_factory.mktemp("sbx-store") / "sandbox.sqlite3"
    handle = start_sandbox(sbx_keys, store)
    yield handle
    handle.stop()


@pytest.fixture
def sbx(sbx_process: SandboxProcess) -> SandboxProcess:
    """The running sandbox, reset (no trades, no faults) for each test."""
    sbx_process.control.reset()
    return sbx_process


@pytest.fixture
def control(sbx: SandboxProcess) -> SandboxControl:
    return sbx.control


@pytest.fixture
def alipay(sbx: SandboxProcess, sbx_keys: Path) -> AliPay:
    return make_client(sbx, sbx_keys)


@pytest.fixture(scope="session")
def alipay_public_key(sbx_keys: Path) -> rsa.RSAPublicKey:
    return load_public_key(sbx_keys / "alipay_public_key.pem")


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    """A local notify_url that answers success."""
    server = NotifyReceiver()
    yield server
    server.close()


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing() -> None:
    """Overrides the project-wide autouse fixture: these tests need no Django settings."""


@pytest.fixture(scope="session", autouse=True)
def static_root() -> None:
    """Overrides the project-wide autouse fixture: these tests need no Django settings."""
