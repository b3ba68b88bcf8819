"""``/gateway.do``: request verification, server API dispatch and the signed envelope."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric import rsa

from . import signing
from .bills import Bills
from .certmode import CertMode
from .config import Config
from .errors import ApiError, business, invalid, missing
from .faults import Faults
from .runtime import TIME_FORMAT
from .trades import TradeService

PAGE_METHODS = ("alipay.trade.page.pay", "alipay.trade.wap.pay")
CERT_DOWNLOAD = "alipay.open.app.alipaycert.download"
SERVER_METHODS = (
    "alipay.trade.query",
    "alipay.trade.close",
    "alipay.trade.refund",
    "alipay.trade.fastpay.refund.query",
    "alipay.data.dataservice.bill.downloadurl.query",
    CERT_DOWNLOAD,
)
REQUIRED = (
    ("app_id", "app-id"),
    ("sign_type", "signature-type"),
    ("sign", "signature"),
    ("timestamp", "timestamp"),
    ("version", "version"),
)
JSON_TYPE = "application/json;charset=utf-8"


def decode_params(query: str, form: bytes = b"") -> dict[str, str]:
    """Request parameters, percent-decoded in the charset the request names.

    Alipay's SDKs encode every parameter in the merchant's charset (utf-8, gbk or gb2312) and
    say which in ``charset``; an unknown charset is read as utf-8 (and refused by verify).
    Form fields win over query fields of the same name.
    """
    # latin-1 keeps the raw bytes; they are decoded once the charset is known.
    raw = parse_qsl(query, keep_blank_values=True, encoding="latin-1")
    if form:
        raw += parse_qsl(form.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    declared = dict(raw).get("charset", "utf-8")
    codec = signing.codec_for(declared) or "utf-8"
    return {
        key.encode("latin-1").decode(codec, "replace"): value.encode("latin-1").decode(
            codec, "replace"
        )
        for key, value in raw
    }


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float | None = None  # sleep, then close the connection without answering
    stream: Iterator[bytes] | None = None  # sent chunked instead of body


@dataclass
class Verified:
    method: str
    app_id: str
    sign_type: str
    params: dict[str, str]
    biz: dict[str, Any]
    charset: str = "utf-8"


def response_key(method: str) -> str:
    return method.replace(".", "_") + "_response" if method else "error_response"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cert_sn_field(current: signing.SigningKey) -> str:
    """``,"alipay_cert_sn":"..."`` in certificate mode, between the node and ``sign`` as
    Alipay places it; nothing in key mode."""
    return ',"alipay_cert_sn":"' + current.cert_sn + '"' if current.cert_sn else ""


class Gateway:
    def __init__(
        self,
        config: Config,
        signer: signing.Signer,
        app_public_key: rsa.RSAPublicKey,
        faults: Faults,
        trades: TradeService,
        bills: Bills,
        cert_mode: CertMode | None = None,
    ) -> None:
        self.config = config
        self.signer = signer
        self.app_public_key = app_public_key
        self.faults = faults
        self.trades = trades
        self.bills = bills
        self.cert_mode = cert_mode
        self.base_url = config.base_url()
        self._signatures: dict[tuple[str, str, str, str], str] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "alipay.trade.query": trades.query,
            "alipay.trade.close": trades.close,
            "alipay.trade.refund": trades.refund,
            "alipay.trade.fastpay.refund.query": trades.refund_query,
            "alipay.data.dataservice.bill.downloadurl.query": self._bill_url,
            CERT_DOWNLOAD: self._cert_download,
        }

    # -- verification ---------------------------------------------------------------------
    def check_method(self, params: dict[str, str], allowed: tuple[str, ...]) -> str:
        method = params.get("method", "")
        if not method:
            raise missing("method", "缺少方法名参数")
        if method not in allowed:
            raise invalid("method", f"不存在的方法名 {method}")
        return method

    def verify(self, params: dict[str, str], method: str) -> Verified:
        for name, what in REQUIRED:
            if not params.get(name):
                raise missing(what, f"缺少 {name} 参数")
        app_id = params["app_id"]
        if app_id not in self.config.app_ids:
            raise invalid("app-id", "无效的AppID参数")
        sign_type = params["sign_type"]
        if sign_type not in signing.SIGN_TYPES:
            raise invalid("signature-type", f"签名类型 {sign_type} 不支持")
        try:
            datetime.strptime(params["timestamp"], TIME_FORMAT)
        except ValueError:
            raise invalid("timestamp", "非法的时间戳参数，格式应为 yyyy-MM-dd HH:mm:ss") from None
        charset = params.get("charset", "utf-8")
        codec = signing.codec_for(charset)
        if codec is None:
            raise invalid("charset", f"字符集 {charset} 不支持，请使用 utf-8、gbk 或 gb2312")
        if self.cert_mode is not None:
            # Alipay picks the app certificate by its SN before it can check the signature.
            self._check_cert_sns(params, self.cert_mode)
        if not signing.verify_request(self.app_public_key, params, sign_type, codec):
            raise invalid(
                "signature",
                "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配",
            )
        raw_biz = params.get("biz_content", "")
        try:
            biz = json.loads(raw_biz) if raw_biz else {}
        except ValueError:
            raise ApiError(
                "40002", "isv.invalid-parameter", "biz_content 不是合法的 JSON"
            ) from None
        if not isinstance(biz, dict):
            raise ApiError("40002", "isv.invalid-parameter", "biz_content 应为 JSON 对象")
        return Verified(method, app_id, sign_type, params, biz, charset)

    @staticmethod
    def _check_cert_sns(params: dict[str, str], cert_mode: CertMode) -> None:
        """Certificate mode: the request names the app certificate and the root bundle."""
        app_cert_sn = params.get("app_cert_sn", "")
        if not app_cert_sn:
            raise invalid(
                "app-cert-sn", "缺少 app_cert_sn 参数：公钥证书模式下须传应用公钥证书序列号"
            )
        if app_cert_sn != cert_mode.app_cert_sn:
            raise invalid(
                "app-cert-sn", "app_cert_sn 与应用公钥证书的序列号不符，请检查应用公钥证书"
            )
        root_cert_sn = params.get("alipay_root_cert_sn", "")
        if not root_cert_sn:
            raise invalid(
                "alipay-root-cert-sn",
                "缺少 alipay_root_cert_sn 参数：公钥证书模式下须传支付宝根证书序列号",
            )
        if root_cert_sn != cert_mode.root_cert_sn:
            raise invalid(
                "alipay-root-cert-sn",
                "alipay_root_cert_sn 与支付宝根证书的序列号不符，请检查支付宝根证书",
            )

    # -- server APIs ----------------------------------------------------------------------
    def handle(self, params: dict[str, str]) -> Reply:
        method = params.get("method", "")
        sign_type = params.get("sign_type", "RSA2")
        if sign_type not in signing.SIGN_TYPES:
            sign_type = "RSA2"
        try:
            method = self.check_method(params, SERVER_METHODS)
            fault_reply = self._apply_faults(method)
            if fault_reply is not None:
                return fault_reply
            request = self.verify(params, method)
            node = self._handlers[method](request.biz)
            return self.signed(method, node, request.sign_type, request.charset)
        except ApiError as exc:
            charset = params.get("charset", "")
            if exc.signed:
                return self.signed(method, exc.node(), sign_type, charset)
            return self.unsigned(method, exc.node(), charset)

    def _apply_faults(self, method: str) -> Reply | None:
        current = self.faults.applies_to(method)
        if current is None:
            return None
        if current.latency_ms:
            time.sleep(current.latency_ms / 1000.0)
        if not self.faults.should_fail(current):
            return None
        if current.error_kind == "http500":
            body = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
            return Reply(500, body, "text/html;charset=utf-8")
        if current.error_kind == "timeout":
            return Reply(504, b"", hang_s=current.timeout_s)
        node = {
            "code": "20000",
            "msg": "Service Currently Unavailable",
            "sub_code": "isp.unknow-error",
            "sub_msg": "系统繁忙",
        }
        return self.unsigned(method, node)

    def signed(
        self, method: str, node: dict[str, Any], sign_type: str, charset: str = "utf-8"
    ) -> Reply:
        """The envelope in the request's charset, signed over the node's bytes in it; in
        certificate mode it names the signing certificate (``alipay_cert_sn``)."""
        codec = signing.codec_for(charset) or "utf-8"
        text = _dumps(node).encode(codec, "replace").decode(codec)
        current = self.signer.current()
        signature = self._sign_cached(current, text, sign_type, codec)
        body = (
            '{"'
            + response_key(method)
            + '":'
            + text
            + _cert_sn_field(current)
            + ',"sign":"'
            + signature
            + '"}'
        )
        return Reply(200, body.encode(codec), f"application/json;charset={codec}")

    def _sign_cached(
        self, current: signing.SigningKey, text: str, sign_type: str, codec: str
    ) -> str:
        # PKCS#1 v1.5 signatures are deterministic: a repeated answer (polling queries)
        # can reuse its signature, as long as the key is the same.
        key = (text, sign_type, codec, current.cert_sn)
        signature = self._signatures.get(key)
        if signature is None:
            signature = signing.sign(current.key, text, sign_type, codec)
            if len(self._signatures) >= 4096:
                self._signatures.clear()
            self._signatures[key] = signature
        return signature

    def unsigned(self, method: str, node: dict[str, Any], charset: str = "utf-8") -> Reply:
        codec = signing.codec_for(charset) or "utf-8"
        envelope: dict[str, Any] = {response_key(method): node}
        cert_sn = self.signer.current().cert_sn
        if cert_sn:
            envelope["alipay_cert_sn"] = cert_sn
        body = _dumps(envelope).encode(codec, "replace")
        return Reply(200, body, f"application/json;charset={codec}")

    def _bill_url(self, biz: dict[str, Any]) -> dict[str, Any]:
        return self.bills.issue(biz, self.base_url, url_override=self.faults.snapshot().bill_url)

    def _cert_download(self, biz: dict[str, Any]) -> dict[str, Any]:
        """``alipay.open.app.alipaycert.download``: a certificate the sandbox signs or signed
        with, as its file (the leaf, then its issuing CA), base64."""
        if self.cert_mode is None:
            raise invalid(
                "cert-mode",
                "应用未启用公钥证书模式（沙箱以密钥模式运行），不能下载支付宝公钥证书",
            )
        cert_sn = str(biz.get("alipay_cert_sn") or "")
        if not cert_sn:
            raise ApiError("40002", "isv.invalid-parameter", "biz_content 缺少 alipay_cert_sn")
        found = self.cert_mode.find(cert_sn)
        if found is None:
            raise business("isv.cert-not-exist", f"支付宝公钥证书不存在 (alipay_cert_sn {cert_sn})")
        return {
            "code": "10000",
            "msg": "Success",
            "alipay_cert_content": base64.b64encode(found.chain_pem).decode("ascii"),
        }

    # -- page pay -------------------------------------------------------------------------
    def open_page_pay(self, params: dict[str, str], allow_paid: bool = False) -> dict[str, Any]:
        """Verify a page / wap pay request and open (or reopen) its trade."""
        method = self.check_method(params, PAGE_METHODS)
        request = self.verify(params, method)
        return self.trades.open_trade(
            app_id=request.app_id,
            method=method,
            biz=request.biz,
            return_url=params.get("return_url", ""),
            notify_url=params.get("notify_url", ""),
            sign_type=request.sign_type,
            charset=request.charset,
            allow_paid=allow_paid,
        )
