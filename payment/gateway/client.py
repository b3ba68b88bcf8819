"""The one place that talks to Alipay: the SDK client, the gateway override, signature checks.

Nothing else in the project imports `alipay`. Server calls return typed results or raise
`GatewayUnavailable` (worth retrying later) or `GatewayRejected` (Alipay refused the request).
"""
import base64
import contextlib
import http.client
import json
import logging
import os
import re
import select
import socket
import threading
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import urllib3
import urllib3.connection
import urllib3.response
from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from alipay.utils import AliPayConfig
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings

from payment import metrics
from payment.gateway import certs, trust
from payment.gateway.trust import KeyFileError

logger = logging.getLogger(__name__)

SDK_LOGGER = "python-alipay-sdk"


def _sdk_logging_quiet() -> None:
    """The SDK's import runs a dictConfig of its own: its logger at DEBUG with a stderr handler,
    over the project's LOGGING (applied earlier, by django.setup()). It may log signed data:
    keep warnings only, through no handler of its own (infra/logs.py configures it the same)."""
    sdk = logging.getLogger(SDK_LOGGER)
    for handler in list(sdk.handlers):
        sdk.removeHandler(handler)
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False


# Here, where the SDK is first imported: no other module imports it (the import contracts).
_sdk_logging_quiet()

PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})


class GatewayUnavailable(Exception):
    """Alipay could not answer now (network, time-out, 5xx, code 20000, bad response signature).

    `code` and `sub_code` say which: Alipay's own, or `transport` (with the error's kind),
    `signature`, `unreadable`.
    """

    def __init__(self, message: str, *, code: str = "", sub_code: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.sub_code = sub_code


class GatewayRejected(Exception):
    """Alipay answered and refused: 4000x with a sub_code."""

    def __init__(self, code: str, sub_code: str, sub_msg: str = "") -> None:
        super().__init__(f"{code} {sub_code} {sub_msg}".strip())
        self.code = code
        self.sub_code = sub_code
        self.sub_msg = sub_msg


@dataclass(frozen=True)
class TradeStatus:
    out_trade_no: str
    trade_no: str
    trade_status: str
    total_amount: Decimal | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def is_paid(self) -> bool:
        return self.trade_status in PAID_STATUSES


@dataclass(frozen=True)
class RefundResult:
    trade_no: str
    refund_fee: Decimal
    fund_change: bool
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RefundQueryResult:
    """What `alipay.trade.fastpay.refund.query` knows of one refund request."""

    out_request_no: str
    refund_status: str  # REFUND_SUCCESS, another status, or "" (older APIs, or not found)
    refund_amount: Decimal | None  # present only when Alipay has the refund
    raw: dict[str, Any] = field(repr=False)

    @property
    def found(self) -> bool:
        return bool(self.refund_status) or self.refund_amount is not None

    def succeeded(self, amount: Decimal) -> bool:
        """Refunded, for this amount: REFUND_SUCCESS, or (older APIs) no status but the amount."""
        if self.refund_status:
            return self.refund_status == "REFUND_SUCCESS" and self.refund_amount in (None, amount)
        return self.refund_amount == amount


def keys_check() -> None:
    """Raise KeyFileError naming the first configured key or certificate file that is not
    usable (certificate mode: expired, not yet valid, not matching the app's private key, or
    Alipay's not chaining to the root)."""
    app_private_key_read()
    if trust.mode() == trust.KEY_MODE:
        trust.public_keys_read(settings.ALIPAY_PUBLIC_KEY_PATH)
    else:
        certificates_check()


def certificates_check(at: datetime | None = None) -> None:
    """Certificate mode's files, as start-up requires them (see keys_check)."""
    at = at or datetime.now(UTC)
    missing = [name for name in ("ALIPAY_APP_CERT_PATH", "ALIPAY_CERT_PATH",
                                 "ALIPAY_ROOT_CERT_PATH") if not getattr(settings, name)]
    if missing:
        raise KeyFileError("Certificate mode needs ALIPAY_APP_CERT_PATH, ALIPAY_CERT_PATH and "
                           f"ALIPAY_ROOT_CERT_PATH; {', '.join(missing)} not set.")
    app_certificate = trust.certificate_read(settings.ALIPAY_APP_CERT_PATH, "App certificate")
    _in_validity(app_certificate, settings.ALIPAY_APP_CERT_PATH, "App certificate", at)
    if app_certificate.public_key() != app_private_key_read().public_key():
        raise KeyFileError(
            f"App certificate {settings.ALIPAY_APP_CERT_PATH} is not for the app private key "
            f"{settings.ALIPAY_APP_PRIVATE_KEY_PATH}: its public key differs.")
    trust.request_sns.cache_clear()
    trust.root_text.cache_clear()
    trust.request_sns()  # the root file holds an RSA-signed certificate
    alipay_text = trust.read_text(settings.ALIPAY_CERT_PATH, "Alipay certificate")
    try:
        certs.chain_verify(alipay_text, trust.root_text(), at=at)
    except certs.ChainError as exc:
        raise KeyFileError(f"Alipay certificate {settings.ALIPAY_CERT_PATH} is not trusted: "
                           f"{exc}.") from None


def _in_validity(certificate: Any, path: Path | None, what: str, at: datetime) -> None:
    if at > certificate.not_valid_after_utc:
        raise KeyFileError(f"{what} {path} expired on "
                           f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                           "download the renewed one from Alipay's console.")
    if at < certificate.not_valid_before_utc:
        raise KeyFileError(f"{what} {path} is not valid before "
                           f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.")


def keys_require() -> None:
    """Stop the process with one clear line when a key file is not usable."""
    try:
        keys_check()
    except KeyFileError as exc:
        raise SystemExit(f"error: {exc}") from None


class _AliPay(AliPay):
    """The SDK with its RSA2 arithmetic done by `cryptography` instead of pycryptodomex, and
    Alipay's certificate mode.

    Request building, the gateway protocol and response parsing stay the SDK's own. Signing
    is about 4 times and verifying about 15 times faster, which is most of a worker's CPU per
    trade query. In certificate mode every request carries `app_cert_sn` and
    `alipay_root_cert_sn`, and an answer is verified with the certificate it names
    (payment/gateway/trust.py); the SDK's `DCAliPay` computes those serial numbers with a fixed
    name format and never reads `alipay_cert_sn`.
    """

    def _sign(self, unsigned_string: str) -> str:
        signature = _app_private_key().sign(
            unsigned_string.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return base64.b64encode(signature).decode()

    def sign_data(self, data: dict[str, Any]) -> str:
        """The SDK's signed form, byte for byte, with the signature percent-encoded by
        `base64_quote`: the SDK's `quote_plus` works one character at a time in Python, and
        the 344-character signature cost more than everything else it encodes together."""
        ordered_items = self._ordered_data(data)
        signature = self._sign("&".join(f"{k}={v}" for k, v in ordered_items))
        return "&".join([*(f"{k}={urllib.parse.quote_plus(v)}" for k, v in ordered_items),
                         f"sign={base64_quote(signature)}"])

    def build_body(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().build_body(*args, **kwargs)
        if trust.mode() == trust.CERT_MODE:
            data["app_cert_sn"], data["alipay_root_cert_sn"] = trust.request_sns()
        return data

    def _verify_and_return_sync_response(self, raw_string: str, response_type: str) -> Any:
        response = json.loads(raw_string)
        if not isinstance(response, dict) or not response.get("sign") \
                or "error_response" in response:
            return super()._verify_and_return_sync_response(raw_string, response_type)
        keys = None
        if trust.mode() == trust.CERT_MODE:
            sn = response.get("alipay_cert_sn")
            if not isinstance(sn, str) or not sn:
                raise AliPayValidationError
            keys = (trust.answer_key(sn, _certificate_download),)
        plain_content = self._get_string_to_be_signed(raw_string, response_type)
        key = trust.signature_key(plain_content.encode(), str(response["sign"]), keys=keys)
        if key is None:
            raise AliPayValidationError
        metrics.signature_verified(key_id=key.key_id, kind="answer")
        return json.loads(plain_content)

    def verified_sync_response(self, data: dict[str, Any], response_type: str) -> Any:
        """The SDK's call, sent over this thread's kept connection instead of `urlopen`.

        A new TCP (and TLS) connection per call was most of a trade query's wall time.
        """
        return self._verify_and_return_sync_response(self.post(data), response_type)

    def post(self, data: dict[str, Any]) -> str:
        # The signed parameters go in a form body (Alipay's gateway takes GET or POST): as a
        # URL of several kilobytes, urllib3 re-encoded them one character at a time.
        return gateway_post(self._gateway, self.sign_data(data).encode(),
                            timeout=self._config.timeout)


def base64_quote(text: str) -> str:
    """`quote_plus` of base64 text: of its 65 characters only `+`, `/` and `=` are encoded."""
    return text.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


class GatewayHTTPError(OSError):
    """The gateway answered with an HTTP error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}


class _Connections(threading.local):
    """Each thread's keep-alive connections to the gateway, by (scheme, host, port).

    A thread sends one call at a time, so a connection of its own needs no pool, no lock and
    no queue: urllib3's pool cost 0.74 ms of CPU per call here against 0.44 ms for the
    standard library's http.client on a kept connection (bench/README.md), and a gateway
    call is most of a worker's CPU per reconciliation check. Forgotten in a forked child and
    after clients_reset().
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.generation = _generation
        self.open: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}


_generation = 0
_connections = _Connections()


def _connection(target: urllib.parse.SplitResult,
                timeout: float) -> http.client.HTTPConnection:
    mine = _connections
    if mine.pid != os.getpid() or mine.generation != _generation:
        for stale in mine.open.values():
            stale.close()
        mine.open, mine.pid, mine.generation = {}, os.getpid(), _generation
    key = (target.scheme, target.hostname or "", target.port)
    connection = mine.open.get(key)
    if connection is not None and connection.sock is not None and _dropped(connection.sock):
        connection.close()  # the server ended it while it was idle: connect again
    if connection is None:
        kind = (http.client.HTTPSConnection if target.scheme == "https"
                else http.client.HTTPConnection)
        connection = mine.open[key] = kind(target.hostname or "", target.port, timeout=timeout)
    connection.timeout = timeout
    if connection.sock is not None:
        connection.sock.settimeout(timeout)
    return connection


def _dropped(sock: socket.socket) -> bool:
    """An idle kept connection that has something to read was closed (or spoken on) by the
    server: it cannot carry a request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def gateway_post(url: str, body: bytes, *, timeout: float) -> str:
    """POST a form to the gateway on this thread's kept connection; its body as text.

    One case is sent again, once: a kept connection that the server ended just as it was
    reused (no answer at all, not even a status line), which no check before sending can
    rule out. Every gateway call is idempotent at Alipay (a query; a close; a refund by its
    out_request_no), so even a request the server did read before it closed is safe to send
    again. Anything else is raised for the caller to retry: GatewayHTTPError for a 4xx/5xx
    answer, OSError or http.client.HTTPException for the transport's failures.
    """
    target = urllib.parse.urlsplit(url)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    for last in (False, True):
        connection = _connection(target, timeout)
        reused = connection.sock is not None
        try:
            connection.request("POST", path, body=body, headers=FORM_HEADERS)
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if reused and not last:
                continue
            raise
        except BaseException:
            connection.close()
            raise
        break
    try:
        data = response.read()
    except BaseException:
        connection.close()
        raise
    if response.will_close:
        connection.close()
    if response.status >= 400:
        raise GatewayHTTPError(response.status)
    return data.decode()


@cache
def _client() -> _AliPay:
    # The SDK loads one Alipay public key at start; it is never used (verification is ours).
    public_key = trust.trusted_keys()[-1].public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client = _AliPay(
        appid=settings.ALIPAY_APPID,
        app_notify_url=None,
        app_private_key_string=_app_private_key_pem(),
        alipay_public_key_string=public_key,
        sign_type="RSA2",
        config=AliPayConfig(timeout=settings.ALIPAY_TIMEOUT_SECONDS),
    )
    # The SDK has no argument for another gateway; it reads this attribute for every call.
    client._gateway = settings.ALIPAY_GATEWAY
    return client


def _app_private_key_pem() -> str:
    return trust.read_text(settings.ALIPAY_APP_PRIVATE_KEY_PATH, "App private key file")


def app_private_key_read() -> rsa.RSAPrivateKey:
    path = settings.ALIPAY_APP_PRIVATE_KEY_PATH
    try:
        key = serialization.load_pem_private_key(_app_private_key_pem().encode(), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"App private key file {path} is not an unencrypted PEM private "
                           "key.") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"App private key {path} is not RSA.")
    return key


@cache
def _app_private_key() -> rsa.RSAPrivateKey:
    return app_private_key_read()


CERT_DOWNLOAD = "alipay.open.app.alipaycert.download"


def _certificate_download(sn: str) -> trust.Download:
    """`alipay.open.app.alipaycert.download` of certificate `sn`: the file, and the answer as
    signed (checked by trust.py, which knows which certificate signed it)."""
    client = _client()
    response_type = CERT_DOWNLOAD.replace(".", "_") + "_response"
    try:
        with metrics.gateway_timed(CERT_DOWNLOAD):
            raw = client.post(client.build_body(CERT_DOWNLOAD, {"alipay_cert_sn": sn}))
        response = json.loads(raw)
        answer = response.get(response_type) or response.get("error_response") or {}
        if str(answer.get("code")) != "10000":
            raise GatewayUnavailable(
                f"{CERT_DOWNLOAD} of {sn}: {answer.get('code')} {answer.get('sub_code', '')}",
                code="certificate", sub_code=_text(answer.get("sub_code")) or "download")
        signed_text = client._get_string_to_be_signed(raw, response_type)
        pem = base64.b64decode(str(answer.get("alipay_cert_content", "")), validate=True)
        return trust.Download(pem.decode("utf-8"), signed_text, str(response.get("sign", "")),
                              str(response.get("alipay_cert_sn", "")))
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        raise GatewayUnavailable(f"{CERT_DOWNLOAD}: {type(exc).__name__}", code="transport",
                                 sub_code=_transport_kind(exc)) from None
    except (ValueError, AttributeError) as exc:  # not JSON, not base64, not text
        raise GatewayUnavailable(f"{CERT_DOWNLOAD}: unreadable answer ({type(exc).__name__})",
                                 code="unreadable") from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _certificate_probe() -> None:
    """One signed call whose answer names Alipay's current certificate (downloading it, if it
    is new, as every answer does)."""
    current = trust.trusted_keys()[0].key_id
    _call("server_api", api_name=CERT_DOWNLOAD, biz_content={"alipay_cert_sn": current})


def alipay_keys_generation() -> int:
    """See trust.keys_generation: read it before a signature check that may fail."""
    return trust.keys_generation()


def alipay_keys_refresh(seen_generation: int) -> bool:
    """After a return or notification no trusted key verified: True when the keys changed
    (a renewed certificate learned, a key file rewritten) and it is worth checking again."""
    return trust.keys_refresh(seen_generation, _certificate_probe)


# The charsets Alipay sends in (the `charset` parameter, that of our request); GB18030 reads
# GBK and GB2312 alike.
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gb18030", "gb2312": "gb18030",
            "gb18030": "gb18030"}


def charset_codec(name: str | None) -> str | None:
    """The codec for Alipay's `charset` parameter (UTF-8 when absent); None if unknown."""
    return CHARSETS.get((name or "utf-8").strip().lower())


def client_warm() -> None:
    """Load the keys and build the client now, not on the first payment of a new process."""
    _client()
    _app_private_key()
    if trust.mode() == trust.CERT_MODE:
        trust.request_sns()


def clients_reset() -> None:
    """Forget the cached client and keys (after settings change, in tests)."""
    global _generation
    _client.cache_clear()
    _generation += 1  # every thread's kept connections are dropped at its next call
    _app_private_key.cache_clear()
    trust.trust_reset()


BEIJING = ZoneInfo("Asia/Shanghai")


def beijing_time(moment: datetime) -> str:
    """Alipay's `yyyy-MM-dd HH:mm:ss`, in Beijing time whatever the server's zone."""
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


# Alipay's product code of each cashier. python-alipay-sdk's api_alipay_trade_wap_pay sends
# QUICK_WAP_PAY, which Alipay does not document for alipay.trade.wap.pay: it is overridden.
PAGE_PRODUCT_CODE = "FAST_INSTANT_TRADE_PAY"
WAP_PRODUCT_CODE = "QUICK_WAP_WAY"


def page_pay_url(*, out_trade_no: str, total_amount: Decimal, subject: str,
                 time_expire: datetime) -> str:
    """The signed page-pay URL (`alipay.trade.page.pay`, the desktop cashier); Alipay refuses
    payment after `time_expire`."""
    query = _client().api_alipay_trade_page_pay(
        subject=subject,
        out_trade_no=out_trade_no,
        total_amount=f"{total_amount:.2f}",
        return_url=settings.ALIPAY_RETURN_URL,
        notify_url=settings.ALIPAY_NOTIFY_URL,
        time_expire=beijing_time(time_expire),
    )
    return f"{settings.ALIPAY_GATEWAY}?{query}"


def wap_pay_url(*, out_trade_no: str, total_amount: Decimal, subject: str,
                time_expire: datetime, quit_url: str) -> str:
    """The signed mobile-web pay URL (`alipay.trade.wap.pay`, the mobile cashier that opens
    the Alipay app on the phone); `quit_url` is where the buyer goes on leaving the cashier.
    The trade exists at Alipay only once the buyer confirms: until then a trade query or close
    answers ACQ.TRADE_NOT_EXIST."""
    query = _client().api_alipay_trade_wap_pay(
        subject=subject,
        out_trade_no=out_trade_no,
        total_amount=f"{total_amount:.2f}",
        return_url=settings.ALIPAY_RETURN_URL,
        notify_url=settings.ALIPAY_NOTIFY_URL,
        product_code=WAP_PRODUCT_CODE,
        quit_url=quit_url,
        time_expire=beijing_time(time_expire),
    )
    return f"{settings.ALIPAY_GATEWAY}?{query}"


def signature_valid(params: dict[str, str]) -> bool:
    """Check Alipay's RSA2 signature of return or notification parameters.

    Alipay signs every parameter it sends but `sign` and `sign_type`, empty ones included
    (`isv_ticket=`), sorted, raw values; dropping the empty ones fails its real signatures.
    """
    signature = params.get("sign", "")
    if params.get("sign_type", "RSA2") != "RSA2" or not signature:
        return False
    codec = charset_codec(params.get("charset"))
    if codec is None:
        return False
    message = "&".join(
        f"{key}={value}"
        for key, value in sorted(params.items())
        if key not in ("sign", "sign_type")
    )
    try:  # signed over the text as encoded in the charset it was sent in
        signed = message.encode(codec)
    except UnicodeEncodeError:
        return False
    return trust.signature_verified(signed, signature, kind="params")


AMOUNT = re.compile(r"[0-9]{1,13}\.[0-9]{2}")


def parse_amount(value: Any) -> Decimal | None:
    """Alipay's amount string as a Decimal, or None when it is not one.

    Alipay always writes `123.45`: "1e1", " 10.00" or fullwidth digits, which Decimal would
    read as 10.00, are not amounts Alipay sent.
    """
    if not isinstance(value, str) or not AMOUNT.fullmatch(value):
        return None
    return Decimal(value)


def _api_name(method: str, kwargs: dict[str, Any]) -> str:
    """Alipay's name of the call (`alipay.trade.query`), for the metrics."""
    if method == "server_api":
        return str(kwargs.get("api_name", "server_api"))
    return method.removeprefix("api_").replace("_", ".")


def _call(method: str, **kwargs: Any) -> dict[str, Any]:
    """One call to the gateway: timed, and its failures counted by code and sub_code."""
    api = _api_name(method, kwargs)
    try:
        with metrics.gateway_timed(api):
            return _call_gateway(method, **kwargs)
    except (GatewayRejected, GatewayUnavailable) as exc:
        metrics.gateway_error(method=api, code=exc.code, sub_code=exc.sub_code)
        raise


def _transport_kind(exc: BaseException) -> str:
    return f"http_{exc.status}" if isinstance(exc, GatewayHTTPError) else type(exc).__name__


def _call_gateway(method: str, **kwargs: Any) -> dict[str, Any]:
    client = _client()
    try:
        response: dict[str, Any] = getattr(client, method)(**kwargs)
    except AliPayValidationError:
        raise GatewayUnavailable(f"{method}: response signature did not verify",
                                 code="signature") from None
    except trust.CertificateUntrusted as exc:
        logger.error("alipay answer to %s not believed: %s", method, exc)
        raise GatewayUnavailable(f"{method}: {exc}", code="certificate",
                                 sub_code="untrusted") from None
    except AliPayException as exc:
        # Unsigned errors (20000 system busy, 4000x argument errors) arrive here.
        code, sub_code, sub_msg = _error_fields(str(exc))
        if code.startswith("4"):
            raise GatewayRejected(code, sub_code, sub_msg) from None
        raise GatewayUnavailable(f"{method}: {code} {sub_code}".strip(), code=code,
                                 sub_code=sub_code) from None
    except (urllib.error.URLError, urllib3.exceptions.HTTPError, http.client.HTTPException,
            TimeoutError, ConnectionError, OSError) as exc:
        raise GatewayUnavailable(f"{method}: {type(exc).__name__}: {exc}", code="transport",
                                 sub_code=_transport_kind(exc)) from None
    except ValueError as exc:  # a body that is not JSON
        raise GatewayUnavailable(f"{method}: unreadable response ({exc})",
                                 code="unreadable") from None
    code = str(response.get("code", ""))
    if code == "10000":
        return response
    sub_code = str(response.get("sub_code", ""))
    if code == "20000" or sub_code in ("ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"):
        raise GatewayUnavailable(f"{method}: {code} {sub_code}", code=code, sub_code=sub_code)
    raise GatewayRejected(code, sub_code, str(response.get("sub_msg", "")))


def _error_fields(text: str) -> tuple[str, str, str]:
    start = text.find("{")
    try:
        body = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return "", "", ""
    node: dict[str, Any] = {}
    for value in body.values() if isinstance(body, dict) else ():
        if isinstance(value, dict) and "code" in value:
            node = value
            break
    return (str(node.get("code", "")), str(node.get("sub_code", "")),
            str(node.get("sub_msg", "")))


def trade_query(*, out_trade_no: str) -> TradeStatus | None:
    """The trade's state at Alipay, or None when Alipay has no such trade yet."""
    try:
        response = _call("api_alipay_trade_query", out_trade_no=out_trade_no)
    except GatewayRejected as exc:
        if exc.sub_code.endswith("TRADE_NOT_EXIST"):
            return None
        raise
    return TradeStatus(
        out_trade_no=str(response.get("out_trade_no", "")),
        trade_no=str(response.get("trade_no", "")),
        trade_status=str(response.get("trade_status", "")),
        total_amount=parse_amount(response.get("total_amount")),
        raw=response,
    )


def trade_close(*, out_trade_no: str) -> bool:
    """Close an unpaid trade. True when closed now or Alipay never had it."""
    try:
        _call("api_alipay_trade_close", out_trade_no=out_trade_no)
    except GatewayRejected as exc:
        if exc.sub_code.endswith("TRADE_NOT_EXIST"):
            return True
        if exc.sub_code.endswith(("TRADE_STATUS_ERROR", "REASON_TRADE_STATUS_INVALID")):
            return False
        raise
    return True


def trade_refund(
    *, out_trade_no: str, refund_amount: Decimal, out_request_no: str, reason: str
) -> RefundResult:
    response = _call(
        "api_alipay_trade_refund",
        out_trade_no=out_trade_no,
        refund_amount=f"{refund_amount:.2f}",
        out_request_no=out_request_no,
        refund_reason=reason,
    )
    return RefundResult(
        trade_no=str(response.get("trade_no", "")),
        refund_fee=parse_amount(response.get("refund_fee")) or Decimal("0.00"),
        fund_change=response.get("fund_change") == "Y",
        raw=response,
    )


def trade_refund_query(*, out_trade_no: str, out_request_no: str) -> RefundQueryResult:
    """Ask Alipay about one refund request; code 10000 only means the question was answered."""
    response = _call(
        "api_alipay_trade_fastpay_refund_query",
        out_request_no=out_request_no,
        out_trade_no=out_trade_no,
    )
    return RefundQueryResult(
        out_request_no=str(response.get("out_request_no", "")),
        refund_status=str(response.get("refund_status", "")),
        refund_amount=parse_amount(response.get("refund_amount")),
        raw=response,
    )


def bill_download_url(*, bill_date: str, bill_type: str = "trade") -> str | None:
    """The short-lived (about 30 s) URL of a day's bill; None when Alipay has no bill for it
    (no trades that day, or not generated yet: bills are ready T+1 around 10:00 Beijing)."""
    try:
        response = _call("server_api", api_name="alipay.data.dataservice.bill.downloadurl.query",
                         biz_content={"bill_type": bill_type, "bill_date": bill_date})
    except GatewayRejected as exc:
        if exc.sub_code.endswith("bill_not_exist"):
            return None
        raise
    return str(response.get("bill_download_url", ""))


BILL_DOWNLOAD = "bill.download"
BILL_CHUNK = 64 * 1024


class BillDownloadRefused(Exception):
    """The bill was not downloaded, and asking again at once would not help: its URL is not one
    of Alipay's bill hosts (BILL_DOWNLOAD_HOSTS, https in production), it answered a redirect,
    or it is larger than BILL_DOWNLOAD_MAX_BYTES or slower than BILL_DOWNLOAD_SECONDS.
    `kind` says which: url, redirect, size, deadline."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def bill_url_checked(url: str) -> urllib3.util.Url:
    """The bill URL to fetch: http(s), no credentials, on a host of BILL_DOWNLOAD_HOSTS, and in
    production over https (Alipay's answers name http://dwbillcenter.alipay.com/..., which
    serves the same over TLS). The connection is made from this parse, never from the text."""
    try:
        parsed = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        raise BillDownloadRefused("bill URL refused: unreadable", kind="url") from None
    host = (parsed.host or "").lower()
    allowed = {name.strip().lower() for name in settings.BILL_DOWNLOAD_HOSTS if name.strip()}
    if parsed.scheme not in ("http", "https"):
        raise BillDownloadRefused(f"bill URL refused: scheme {parsed.scheme!r} is not http(s)",
                                  kind="url")
    if parsed.auth:
        raise BillDownloadRefused("bill URL refused: it carries credentials", kind="url")
    if host not in allowed:
        raise BillDownloadRefused(f"bill URL refused: host {host[:100]!r} is not in "
                                  "BILL_DOWNLOAD_HOSTS", kind="url")
    if settings.PRODUCTION and parsed.scheme != "https":
        port = None if parsed.port in (None, 80) else parsed.port
        parsed = parsed._replace(scheme="https", port=port)
    return parsed


def bill_download(*, url: str, into: Any) -> int:
    """Stream the bill at `url` into the binary file `into`; the bytes written. Raises
    BillDownloadRefused (see bill_url_checked and the BILL_DOWNLOAD_* limits), or
    GatewayUnavailable when it could not be fetched now."""
    try:
        with metrics.gateway_timed(BILL_DOWNLOAD):
            return _bill_download(url, into)
    except GatewayUnavailable as exc:
        metrics.gateway_error(method=BILL_DOWNLOAD, code=exc.code, sub_code=exc.sub_code)
        raise
    except BillDownloadRefused as exc:
        metrics.gateway_error(method=BILL_DOWNLOAD, code="refused", sub_code=exc.kind)
        raise


class _DownloadDeadline:
    """Shuts the connection's socket when the download's time is up, so that a blocked read
    returns there and then: per-read time-outs never fire on a source that sends a byte every
    few seconds, in its TLS handshake, its headers or its body. The connection holds its
    socket from the TCP connect on; `watch` keeps it once connected (a response to be read
    takes it from the connection)."""

    def __init__(self, seconds: float, connection: urllib3.connection.HTTPConnection) -> None:
        self.seconds = seconds
        self._connection = connection
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._passed = threading.Event()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def watch(self) -> None:
        with self._lock:
            self._sock = self._connection.sock
        self.check()  # the time may have run out while connecting

    def _cut(self) -> None:
        self._passed.set()
        with self._lock, contextlib.suppress(OSError):
            sock = self._sock or self._connection.sock
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        if self._passed.is_set():
            raise BillDownloadRefused(
                f"the bill took longer than BILL_DOWNLOAD_SECONDS ({self.seconds:g} s) to "
                "download", kind="deadline")

    def cancel(self) -> None:
        self._timer.cancel()


def _bill_download(url: str, into: Any) -> int:
    target = bill_url_checked(url)
    limit = settings.BILL_DOWNLOAD_MAX_BYTES
    seconds = settings.BILL_DOWNLOAD_SECONDS
    too_large = BillDownloadRefused(
        f"the bill is larger than BILL_DOWNLOAD_MAX_BYTES ({limit} bytes)", kind="size")
    # One connection of its own, not the shared pool's: the deadline shuts its socket.
    connection_class = (urllib3.connection.HTTPSConnection if target.scheme == "https"
                        else urllib3.connection.HTTPConnection)
    connection = connection_class(
        target.host or "", target.port,
        timeout=min(settings.ALIPAY_TIMEOUT_SECONDS * 6, seconds))
    deadline = _DownloadDeadline(seconds, connection)
    response: urllib3.response.BaseHTTPResponse | None = None
    try:
        connection.connect()
        deadline.watch()
        # identity: a compressed body would be a second zip bomb, outside the byte count.
        connection.request("GET", target.request_uri, headers={"Accept-Encoding": "identity"},
                           preload_content=False, decode_content=False)
        response = connection.getresponse()
        if 300 <= response.status < 400:
            location = response.headers.get("Location", "")
            with contextlib.suppress(urllib3.exceptions.LocationParseError):
                location = urllib3.util.parse_url(location).host or ""
            raise BillDownloadRefused(
                f"the bill URL answered HTTP {response.status} to {location[:100] or '?'}; "
                "redirects are not followed (BILL_DOWNLOAD_HOSTS)", kind="redirect")
        if response.status != 200:
            raise GatewayUnavailable(f"bill download: HTTP {response.status}",
                                     code="transport", sub_code=f"http_{response.status}")
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            raise too_large
        size = 0
        for chunk in response.stream(BILL_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large
            into.write(chunk)
        deadline.check()  # a body without a length ends where the deadline shut it
        return size
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        deadline.check()
        raise GatewayUnavailable(f"bill download: {type(exc).__name__}", code="transport",
                                 sub_code=type(exc).__name__) from None
    finally:
        deadline.cancel()
        if response is not None:
            response.close()  # the socket is the response's once it has been read
        connection.close()
