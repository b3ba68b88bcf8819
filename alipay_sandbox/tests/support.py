"""Shared helpers for the sandbox tests (plain functions, no fixtures)."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import requests
from alipay import AliPay, DCAliPay
from alipay.utils import AliPayConfig
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.config import DEFAULT_APP_ID
from alipay_sandbox.testing import SandboxProcess, wait_for

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


def make_cert_client(sbx: SandboxProcess, keys: Path, app_id: str = APP_ID) -> DCAliPay:
    """A merchant in certificate mode: python-alipay-sdk's DCAliPay with the files of
    `python -m alipay_sandbox certs` (it adds app_cert_sn and alipay_root_cert_sn)."""
    client = DCAliPay(
        app_id,
        app_private_key_string=(keys / "app_private_key.pem").read_text(),
        app_public_key_cert_string=(keys / "appCertPublicKey.crt").read_text(),
        alipay_public_key_cert_string=(keys / "alipayCertPublicKey_RSA2.crt").read_text(),
        alipay_root_cert_string=(keys / "alipayRootCert.crt").read_text(),
    )
    client._gateway = sbx.gateway
    return client


def certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain file, leaf first."""
    return x509.load_pem_x509_certificates(pem)


def certified_key(pem: bytes) -> rsa.RSAPublicKey:
    """The public key of the first certificate of a PEM file."""
    key = certificates(pem)[0].public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def sdk_verifies(keys: Path, public_key: rsa.RSAPublicKey, params: dict[str, str]) -> bool:
    """Whether python-alipay-sdk, holding ``public_key`` as Alipay's, accepts signed return or
    notification parameters."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    client = AliPay(
        APP_ID,
        app_private_key_string=(keys / "app_private_key.pem").read_text(),
        alipay_public_key_string=pem,
    )
    data = dict(params)
    signature = data.pop("sign")
    return bool(client.verify(data, signature))


CHINA = timezone(timedelta(hours=8))


def cn_today() -> str:
    return datetime.now(CHINA).strftime("%Y-%m-%d")


def cn_day(days: int) -> str:
    """The Beijing date ``days`` from today (negative: past)."""
    return (datetime.now(CHINA) + timedelta(days=days)).strftime("%Y-%m-%d")


def cn_time(seconds_from_now: float) -> str:
    """Beijing time ``yyyy-MM-dd HH:mm:ss``, ``seconds_from_now`` from now (for time_expire)."""
    moment = datetime.now(CHINA) + timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def decode_form(body: bytes) -> dict[str, str]:
    """A form body decoded in the charset its ``charset`` field names, as a merchant must."""
    raw = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    charset = dict(raw).get("charset", "utf-8")
    return {
        k.encode("latin-1").decode(charset): v.encode("latin-1").decode(charset) for k, v in raw
    }


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
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(
                        {
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type", ""),
                            "raw": body,
                            "form": decode_form(body),
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


BILL_METHOD = "alipay.data.dataservice.bill.downloadurl.query"
DETAIL_START = "业务明细列表-"
DETAIL_END = "业务明细列表结束"


def bill_url(client: AliPay, bill_date: str) -> dict[str, Any]:
    return client.server_api(BILL_METHOD, {"bill_type": "trade", "bill_date": bill_date})


def download(client: AliPay, bill_date: str) -> bytes:
    result = bill_url(client, bill_date)
    assert result["code"] == "10000", result
    response = session().get(result["bill_download_url"], timeout=60)
    assert response.status_code == 200
    return response.content


@dataclass
class Bill:
    names: list[str]
    lines: list[str]  # the detail file, decoded from GBK
    header: list[str]
    raw_rows: list[list[str]]  # as in the file (Alipay's padding kept)
    footer: list[str]  # the comment lines after the detail block
    summary: dict[str, str]  # the 合计 line of the summary file

    @property
    def records(self) -> list[dict[str, str]]:
        return [
            dict(zip(self.header, (v.strip() for v in row), strict=True)) for row in self.raw_rows
        ]


def read_bill(content: bytes) -> Bill:
    """Read an Alipay trade bill zip the way a merchant must: GBK names, GBK CSV, markers."""
    archive = zipfile.ZipFile(io.BytesIO(content), metadata_encoding="gbk")
    names = archive.namelist()
    assert all(not info.flag_bits & 0x800 for info in archive.infolist())  # no UTF-8 names
    detail_name = next(n for n in names if n.endswith("_业务明细.csv"))
    text = archive.read(detail_name).decode("gbk")
    lines = text.split("\r\n")
    start = next(i for i, line in enumerate(lines) if DETAIL_START in line)
    end = next(i for i, line in enumerate(lines) if DETAIL_END in line)
    assert lines[start] == (
        "#-----------------------------------------业务明细列表"
        "----------------------------------------"
    )
    assert lines[end] == (
        "#-----------------------------------------业务明细列表结束"
        "------------------------------------"
    )
    rows = list(csv.reader(lines[start + 1 : end]))
    summary_text = archive.read(next(n for n in names if n.endswith("(汇总).csv"))).decode("gbk")
    summary_rows = [
        row for row in csv.reader(summary_text.split("\r\n")) if row and row[0][:1] != "#"
    ]
    summary = dict(zip(summary_rows[0], (v.strip() for v in summary_rows[-1]), strict=True))
    return Bill(names, lines, rows[0], rows[1:], [x for x in lines[end + 1 :] if x], summary)
