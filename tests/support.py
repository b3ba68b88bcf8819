"""Helpers shared by the tests: processes, HTTP clients and Alipay-style signing."""
import base64
import datetime
import os
import shutil
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

# The one launcher and its helpers, shared with the benchmarks and the sandbox's own tests.
from alipay_sandbox.testing import (  # noqa: F401  (re-exported)
    ROOT,
    ManagedProcess,
    free_port,
    process_fixture,
    wait_for,
    wait_for_port,
)

APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"


def sign_params(params: dict[str, str], private_key_pem: bytes) -> dict[str, str]:
    """Sign return/notify parameters the way Alipay does, with a test's own key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    # Every parameter but sign and sign_type, empty ones included, in the request's charset.
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items())
                       if k not in ("sign", "sign_type"))
    encoding = "gb18030" if params.get("charset", "").lower() in ("gbk", "gb2312") else "utf-8"
    signature = key.sign(message.encode(encoding), padding.PKCS1v15(), hashes.SHA256())
    return {**params, "sign_type": "RSA2", "sign": base64.b64encode(signature).decode()}


def query_params(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))


# `make test` runs the suite in two processes (pytest-xdist): each has its own Redis databases,
# or one's workers would take the other's tasks. The first uses 14 (the session's broker) and
# 10-12 for the tests that want one of their own; the second 13 (config/settings_test.py) and
# 7-9.
SPARE_REDIS_DBS = (10, 11, 12)


def redis_url(spare: int, base: str = "redis://127.0.0.1:6379/0") -> str:
    """Spare Redis database `spare` (10, 11 or 12) of this test process, on base's server."""
    from config.settings_test import XDIST_INDEX

    assert spare in SPARE_REDIS_DBS, spare
    return f"{base.rsplit('/', 1)[0]}/{spare - len(SPARE_REDIS_DBS) * XDIST_INDEX}"


def process_env(**changes: str) -> dict[str, str]:
    """The environment for a process a test starts: this one's, with config.settings (what
    production runs; pytest runs config.settings_test), the test run's throttle rates, and
    key paths that never hold keys unless the test gives its own (`alipay_env`)."""
    from config import settings_test

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "RETURN_RATE": settings_test.RETURN_RATE,
        "PAYMENT_REFUSED_RATE": settings_test.PAYMENT_REFUSED_RATE,
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(settings_test.ALIPAY_APP_PRIVATE_KEY_PATH),
        "ALIPAY_PUBLIC_KEY_PATH": str(settings_test.ALIPAY_PUBLIC_KEY_PATH),
        **changes,
    }


def python_args(*args: str) -> list[str]:
    return [sys.executable, *args]


class ShopClient:
    """The shop's HTTP API as a storefront uses it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def register_and_login(self, username: str, password: str = "s3cret-pass") -> "ShopClient":
        response = self.session.post(
            self.url("/users/"), json={"username": username, "password": password}, timeout=10
        )
        assert response.status_code == 201, response.text
        response = self.session.post(
            self.url("/authorizations/"), json={"username": username, "password": password},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        self.session.headers["Authorization"] = f"Token {response.json()['token']}"
        return self

    def order(self, items: list[dict[str, int]]) -> dict[str, Any]:
        response = self.session.post(self.url("/orders/"), json={"items": items}, timeout=10)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def pay_link(self, order_id: str) -> requests.Response:
        return self.session.get(self.url(f"/orders/{order_id}/payment/"), timeout=10)

    def put_status(self, params: dict[str, str] | str) -> requests.Response:
        query = params if isinstance(params, str) else urllib.parse.urlencode(params)
        return requests.put(self.url(f"/payment/status/?{query}"), timeout=30)


class TcpProxy:
    """A TCP relay to a real server that a test can cut: every connection drops, new ones fail."""

    def __init__(self, upstream_port: int) -> None:
        import threading

        self.upstream_port = upstream_port
        self.port = free_port()
        self.available = threading.Event()
        self.available.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.available.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        self.available.clear()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._sockets.clear()

    def up(self) -> None:
        self.available.set()

    def close(self) -> None:
        self.down()
        self._listener.close()


def procfile_command(name: str, extra: str = "") -> list[str]:
    """The Procfile's command for a process type (plus `extra` arguments), to run exactly
    what `make run` and production run."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        kind, _, command = line.partition(":")
        if kind.strip() == name:
            # The commands are found in this interpreter's virtualenv, as `make run` finds them.
            bin_dir = Path(sys.executable).parent
            return ["bash", "-c", f'PATH="{bin_dir}:$PATH" exec {command.strip()} {extra}'.strip()]
    raise KeyError(name)


def signed_return(order_id: str, amount: str, trade_no: str, private_key_pem: bytes,
                  **changes: str) -> dict[str, str]:
    """Return-redirect parameters as Alipay signs them, with a test's own Alipay key."""
    params = {
        "charset": "utf-8", "out_trade_no": order_id, "method": "alipay.trade.page.pay.return",
        "total_amount": amount, "trade_no": trade_no, "auth_app_id": APP_ID, "version": "1.0",
        "app_id": APP_ID, "seller_id": SELLER_ID, "timestamp": "2026-11-25 12:00:00",
        **changes,
    }
    return sign_params(params, private_key_pem)


# -- the production proxy, run here -----------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()), None)
NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"
TLS_SNIPPET = ROOT / "deploy" / "tls.conf"


def _self_signed(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "fullchain.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


class Proxy:
    """deploy/nginx.conf with this machine's addresses: the upstream, the ports, the folders,
    and any `changes` (text -> replacement, every occurrence) a test or benchmark makes."""

    def __init__(self, directory: Path, upstream_port: int, tls: bool,
                 changes: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        tls_dir = directory / "tls"
        tls_dir.mkdir(parents=True)
        if tls:
            _self_signed(tls_dir)
            snippet = TLS_SNIPPET.read_text().replace("listen 443 ssl;",
                                                      f"listen 127.0.0.1:{self.tls_port} ssl;")
            (tls_dir / "tls.conf").write_text(snippet.replace("/etc/nginx/tls/", f"{tls_dir}/"))
        temp_paths = "".join(f"    {kind}_temp_path {directory / kind};\n"
                             for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        text = NGINX_CONFIG.read_text()
        for old, new in (
            # `resolve` needs nginx 1.27.3 (the image's is newer) and a name Docker's DNS
            # knows; every upstream names the same replicas.
            ("web:8000 resolve", f"127.0.0.1:{upstream_port}"),
            ("listen 80 default_server;", f"listen 127.0.0.1:{self.port} default_server;"),
            ("include /etc/nginx/tls/*.conf;", f"include {tls_dir}/*.conf;"),
            ("http {\n", "http {\n" + temp_paths),
            *(changes or {}).items(),
        ):
            assert old in text, old
            text = text.replace(old, new)
        self.config = directory / "nginx.conf"
        self.config.write_text(text)

    def args(self, *extra: str) -> list[str]:
        assert NGINX is not None
        return [NGINX, "-p", str(self.directory), "-e", str(self.directory / "error.log"),
                "-c", str(self.config),
                "-g", f"daemon off; pid {self.directory / 'nginx.pid'}; user root;", *extra]

    def start(self, log_dir: Path, name: str = "nginx") -> ManagedProcess:
        process = ManagedProcess(name, self.args(), {"PATH": "/usr/sbin:/usr/bin:/bin"},
                                 log_dir).start()
        wait_for_port(self.port)
        if self.tls_port is not None:
            wait_for_port(self.tls_port)
        return process
