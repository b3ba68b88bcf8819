"""Fixtures for the sandbox's own tests: no Django, no database, one sandbox process. They use
only the sandbox and libraries, never the shop's packages."""

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
    write_test_keys,
)
from alipay_sandbox.tests.support import NotifyReceiver, make_client

clear_proxy_env()


@pytest.fixture(scope="session")
def sbx_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Throwaway keys: the app's pair and the pair the sandbox signs with."""
    return write_test_keys(tmp_path_factory.mktemp("sbx-keys"))


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

