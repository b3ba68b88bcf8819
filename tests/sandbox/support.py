"""Shared helpers for the sandbox tests (plain functions, no fixtures)."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import requests
from alipay import AliPay
from alipay.utils import AliPayConfig

from alipay_sandbox.config import DEFAULT_APP_ID
from alipay_sandbox.testing import SandboxProcess
from tests.support import wait_for

__all__ = ["wait_for"]  # the sandbox tests take it from here with the other helpers

APP_ID = DEFAULT_APP_ID
SELLER_ID = "2088000000000001"


def make_client(
    sbx: SandboxProcess,
    keys: Path,
    app_id: str = APP_ID,
    timeout: float = 10,
    sign_type: str = "RSA2",
    private_key: str | None = None,
) -> AliPay:
    client = AliPay(
        app_id,
        app_private_key_string=private_key or (keys / "app_private_key.pem").read_text(),
        alipay_public_key_string=(keys / "alipay_public_key.pem").read_text(),
        sign_type=sign_type,
        config=AliPayConfig(timeout=timeout),
    )
    client._gateway = sbx.gateway
    return client


def cn_today() -> str:
    return datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d")


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def open_cashier(client: AliPay, query: str, http: requests.Session | None = None) -> str:
    """GET the pay URL like a browser; return the cashier page's HTML."""
    http = http or session()
    response = http.get(client._gateway + "?" + query, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def form_action(html: str, button_id: str) -> str:
    forms = re.findall(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', html, re.S)
    for action, inner in forms:
        if f'id="{button_id}"' in inner:
            return action.replace("&amp;", "&")
    raise AssertionError(f"no form with {button_id} in page")


def browser_pay(
    sbx: SandboxProcess, client: AliPay, query: str
) -> tuple[requests.Response, dict[str, str]]:
    """Open the cashier, press Pay; return the pay response and the return parameters."""
    http = session()
    html = open_cashier(client, query, http)
    action = form_action(html, "pay-button")
    response = http.post(urljoin(sbx.base_url, action), allow_redirects=False, timeout=10)
    params: dict[str, str] = {}
    if response.status_code == 302:
        params = dict(parse_qsl(urlsplit(response.headers["Location"]).query))
    return response, params


class NotifyReceiver:
    """A merchant notify_url on a local port; answers from ``script`` then ``default``."""

    def __init__(self, script: list[str] | None = None, default: str = "success") -> None:
        self.script = list(script or [])
        self.default = default
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8")
                with receiver.lock:
                    receiver.received.append(
                        {
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type", ""),
                            "form": dict(parse_qsl(body, keep_blank_values=True)),
                            "at": time.time(),
                        }
                    )
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                data = answer.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alipay/notify"

    def forms(self) -> list[dict[str, str]]:
        with self.lock:
            return [item["form"] for item in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
