"""Helpers for tests and benchmarks: the one process launcher (ManagedProcess), a sandbox
process built on it, the marker for fixtures that start processes, throwaway keys, raw calls
to the sandbox and envelope checks."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .client import SandboxControl

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def clear_proxy_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Drop proxy variables and set no_proxy for local hosts (in ``env`` or os.environ)."""
    target: Any = os.environ if env is None else env
    for name in PROXY_VARS:
        target.pop(name, None)
    target["no_proxy"] = target["NO_PROXY"] = "127.0.0.1,localhost"
    return dict(target)


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until predicate returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    def is_open() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(is_open, timeout)


# The fixtures defined with `process_fixture`, by name: a test using one, directly or through
# other fixtures, is in the slow tier (the repository's conftest.py marks it).
PROCESS_FIXTURES: set[str] = set()


def process_fixture(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`pytest.fixture` for a fixture that starts a process (a server, workers, beat, the
    sandbox, a broker, a browser), used as `@process_fixture` or `@process_fixture(scope=...)`
    with pytest.fixture's options. Defining it this way is what puts its tests in the slow tier.
    """
    import pytest

    def define(fixture_function: Callable[..., Any]) -> Any:
        PROCESS_FIXTURES.add(options.get("name") or fixture_function.__name__)
        return pytest.fixture(fixture_function, **options)

    return define(function) if function is not None else define


class ManagedProcess:
    """A child process of the tests or the benchmarks: its own session (so that stopping it
    reaches its children too), its output in `<log_dir>/<name>.log`, stopped with SIGTERM and
    killed if it lingers."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        # The child writes through its own copy of the file; ours closes at once.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30.0, start_at: int = 0) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_text()[-3000:]}")
            return text in self.log_text()[start_at:]

        wait_for(seen, timeout, 0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the whole group (children a leader left behind too), then SIGKILL."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:  # the group is gone
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class SandboxProcess(ManagedProcess):
    """A running `python -m alipay_sandbox`, with its control client."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 port: int, store: Path) -> None:
        super().__init__(name, args, env, log_dir)
        self.port = port
        self.store = store
        self.base_url = f"http://127.0.0.1:{port}"
        self.control = SandboxControl(self.base_url)

    @property
    def gateway(self) -> str:
        return self.base_url + "/gateway.do"


def start_sandbox(
    keys_dir: Path,
    store: Path,
    *extra_args: str,
    port: int | None = None,
    control: bool = True,
    time_factor: float = 0.001,
    app_id: str | None = None,
    seller_id: str | None = None,
    log_dir: Path | None = None,
    name: str = "sandbox",
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> SandboxProcess:
    """Start `python -m alipay_sandbox` (on a free port unless told) and wait until it
    answers; its log is `<log_dir>/<name>.log`, beside the store unless told."""
    port = port or free_port()
    args = [
        sys.executable, "-m", "alipay_sandbox", "--port", str(port), "--store", str(store),
        "--alipay-private-key", str(keys_dir / "alipay_private_key.pem"),
        "--app-public-key", str(keys_dir / "app_public_key.pem"),
        "--time-factor", str(time_factor), "--control" if control else "--no-control",
        *(["--app-id", app_id] if app_id else []),
        *(["--seller-id", seller_id] if seller_id else []),
        *extra_args,
    ]
    handle = SandboxProcess(name, args, clear_proxy_env(dict(env or os.environ)),
                            log_dir or store.parent, port, store).start()
    deadline = time.monotonic() + timeout
    while True:
        if handle.proc is not None and handle.proc.poll() is not None:
            handle.stop()
            raise RuntimeError(f"sandbox exited early: {handle.log_text()[-2000:]}")
        try:
            handle.control.wait_ready(timeout=0.2)
            return handle
        except OSError:
            if time.monotonic() > deadline:
                handle.stop()
                raise RuntimeError(f"sandbox did not answer: {handle.log_text()[-2000:]}") from None


def key_pair() -> tuple[bytes, bytes]:
    """A new RSA-2048 ``(private_pem, public_pem)``: PKCS#8 and SubjectPublicKeyInfo PEM, the
    forms python-alipay-sdk and the sandbox read."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return private_pem, public_pem


def write_test_keys(directory: Path) -> Path:
    """Throwaway keys for a sandbox and its client, under the names `start_sandbox` and the
    merchant side read: the app's pair and the pair the sandbox signs with as Alipay."""
    directory.mkdir(parents=True, exist_ok=True)
    for pair in ("app", "alipay"):
        private_pem, public_pem = key_pair()
        (directory / f"{pair}_private_key.pem").write_bytes(private_pem)
        (directory / f"{pair}_public_key.pem").write_bytes(public_pem)
    return directory


def fetch_raw(client: Any, method: str, biz_content: dict[str, Any], timeout: float = 10) -> str:
    """Call ``method`` through the SDK's own signing, but return the raw response text."""
    data = client.build_body(method, biz_content)
    url = client._gateway + "?" + client.sign_data(data)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


def node_text(raw: str, method: str) -> str:
    """The exact text of the response node, found by parsing (not by brace counting)."""
    key = '"' + method.replace(".", "_") + '_response":'
    start = raw.index(key) + len(key)
    _, end = json.JSONDecoder().raw_decode(raw, start)
    return raw[start:end]


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def verify_rsa2(public_key: rsa.RSAPublicKey, message: str, signature_b64: str) -> bool:
    try:
        public_key.verify(
            base64.b64decode(signature_b64),
            message.encode("utf-8"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except Exception:
        return False
    return True


def check_envelope(raw: str, method: str, alipay_public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """Verify a signed envelope independently of the SDK; return the node."""
    body = json.loads(raw)
    text = node_text(raw, method)
    if not verify_rsa2(alipay_public_key, text, body["sign"]):
        raise AssertionError(f"bad envelope signature for {method}")
    node = json.loads(text)
    assert node == body[method.replace(".", "_") + "_response"]
    return node
