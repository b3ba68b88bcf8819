"""Helpers for tests and benchmarks: start a sandbox process, call it raw, check envelopes."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SandboxProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    store: Path
    log_path: Path
    control: SandboxControl
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def gateway(self) -> str:
        return self.base_url + "/gateway.do"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_sandbox(
    keys_dir: Path,
    store: Path,
    *extra_args: str,
    port: int | None = None,
    control: bool = True,
    time_factor: float = 0.001,
    log_path: Path | None = None,
    timeout: float = 15.0,
) -> SandboxProcess:
    """Start ``python -m alipay_sandbox`` on a free port and wait until it answers."""
    port = port or free_port()
    log_path = log_path or store.with_suffix(".log")
    log_file = open(log_path, "ab")  # noqa: SIM115 (closed by SandboxProcess.stop)
    args = [
        sys.executable,
        "-m",
        "alipay_sandbox",
        "--port",
        str(port),
        "--store",
        str(store),
        "--alipay-private-key",
        str(keys_dir / "alipay_private_key.pem"),
        "--app-public-key",
        str(keys_dir / "app_public_key.pem"),
        "--time-factor",
        str(time_factor),
        "--control" if control else "--no-control",
        *extra_args,
    ]
    env = clear_proxy_env(dict(os.environ))
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    control_client = SandboxControl(base_url)
    handle = SandboxProcess(base_url, process, store, log_path, control_client, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            handle.stop()
            raise RuntimeError(f"sandbox exited early: {handle.log_text()[-2000:]}")
        try:
            control_client.wait_ready(timeout=0.2)
            return handle
        except OSError:
            if time.monotonic() > deadline:
                handle.stop()
                raise RuntimeError(f"sandbox did not answer: {handle.log_text()[-2000:]}") from None


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
