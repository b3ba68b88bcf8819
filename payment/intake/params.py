"""Reading what arrived: Alipay's parameters from a query string and a body, and the shape and
signature every return or notification must have. Pure functions: no database, no I/O."""
import json
import re
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.http import QueryDict

from payment import event_store, gateway
from payment.errors import PaymentError, SignatureInvalid

OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
BASE64 = re.compile(r"[A-Za-z0-9+/=]{16,1024}")
CHARSET_PARAM = re.compile(r"(?:^|&)charset=([^&]{0,20})")

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# Far above Alipay's largest return or notification (about 2 KB), far below what fills a disk.
MAX_BODY_SIZE = 64 * 1024


def media_type(header: str) -> str:
    """The media type of a Content-Type header, without parameters; media types are
    case-insensitive (RFC 9110 8.3.1)."""
    return header.split(";", 1)[0].strip().lower()


def params_parse(*, query: str | bytes, body: bytes, content_type: str) -> dict[str, Any]:
    """Query string and body (form or JSON object) merged; the body wins. `content_type` is a
    media type as `media_type` gives it."""
    try:
        return _params_parse(query, body, content_type)
    except SuspiciousOperation:  # more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        raise PaymentError("Too many parameters.") from None


def _codec(raw: str | bytes) -> str:
    """The codec of a form or query Alipay sent: its own `charset` parameter says (GBK when
    the request that started the trade was GBK), UTF-8 when there is none."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    match = CHARSET_PARAM.search(text)
    codec = gateway.charset_codec(match.group(1) if match else None)
    if codec is None:
        raise PaymentError("The charset is not one Alipay uses.")
    return codec


def _params_parse(query: str | bytes, body: bytes, content_type: str) -> dict[str, Any]:
    try:
        params: dict[str, Any] = dict(QueryDict(query, encoding=_codec(query)).lists())
    except (ValueError, UnicodeDecodeError):
        raise PaymentError("The query string cannot be read.") from None
    if not body:
        return params
    if content_type == JSON:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise PaymentError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise PaymentError("The request body must be a form or a JSON object.")
        params.update(data)
    elif content_type in (FORM, "") or content_type.startswith("text/"):
        try:
            params.update(QueryDict(body, encoding=_codec(body)).lists())
        except (ValueError, UnicodeDecodeError):
            raise PaymentError("The request body cannot be read.") from None
    else:
        raise PaymentError("The request body must be a form or a JSON object.")
    return params


def params_clean(raw: dict[str, Any]) -> dict[str, str]:
    """Alipay's parameters as a plain dict of str, or PaymentError when they are not."""
    if len(raw) > event_store.MAX_PARAMS:
        raise PaymentError("Too many parameters.")
    params: dict[str, str] = {}
    size = 0
    for key, value in raw.items():
        if isinstance(value, list):
            value = value[-1] if value else ""
        if not isinstance(key, str) or not isinstance(value, str):
            raise PaymentError("Parameters must be text.")
        if len(key) > 64 or len(value) > event_store.MAX_VALUE_LENGTH:
            raise PaymentError("A parameter is too long.")
        size += len(key) + len(value)
        if size > event_store.MAX_PARAMS_SIZE:
            raise PaymentError("The parameters are too large.")
        params[key] = value
    return params


def params_authenticate(params: dict[str, str]) -> None:
    """The shape every return or notification must have, and Alipay's signature over it."""
    if not params.get("sign") or not params.get("out_trade_no"):
        raise PaymentError(
            "These are not Alipay's parameters: sign and out_trade_no are required."
        )
    if not OUT_TRADE_NO.fullmatch(params["out_trade_no"]):
        raise PaymentError("out_trade_no must be 1 to 64 letters, digits or underscores.")
    if not BASE64.fullmatch(params["sign"]):
        raise PaymentError("sign is not a base64 signature.")
    if not gateway.signature_valid(params):
        raise SignatureInvalid("signature does not verify with Alipay's public key")
