"""The intake endpoints in the OpenAPI schema.

They are plain views (and an ASGI fast path), not DRF views, so drf-spectacular does not see
them: this post-processing hook documents their contract.
"""
from typing import Any

_MESSAGE = {"type": "object", "properties": {"message": {"type": "string"}}}
_RETURN_PARAMS = [
    {"name": name, "in": "query", "required": name in ("sign", "out_trade_no"),
     "schema": {"type": "string"}, "description": description}
    for name, description in (
        ("out_trade_no", "our order id"), ("trade_no", "Alipay's trade number"),
        ("total_amount", "the amount paid, two decimals"),
        ("method", "alipay.trade.page.pay.return"),
        ("app_id", "our app_id"), ("seller_id", "our seller id"), ("timestamp", "Beijing time"),
        ("sign_type", "RSA2"), ("sign", "Alipay's signature over the other parameters"),
    )
]


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}}}


def _status_operation(operation_id: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": "Alipay's return parameters, as the pay_success page hands them over",
        "tags": ["payment"],
        "security": [],
        "parameters": _RETURN_PARAMS,
        "responses": {
            "200": _json("applied (also on a reload)",
                         {"type": "object", "properties": {"trade_id": {"type": "string"}}}),
            "202": _json("not settled within RETURN_WAIT_SECONDS", {
                "type": "object", "properties": {"status": {"type": "string"},
                                                 "order_id": {"type": "string"}}}),
            "400": _json("not Alipay's return parameters", _MESSAGE),
            "403": _json("rejected: the signature or the checks failed", _MESSAGE),
            "409": _json("paid after the order was canceled; being refunded", _MESSAGE),
            "503": _json("the database cannot answer now; nothing was stored, ask again",
                         _MESSAGE),
            "413": _json("the request body is larger than any return", _MESSAGE),
            "429": _json("too many requests from this client (RETURN_RATE, or "
                         "PAYMENT_REFUSED_RATE for refused ones); see Retry-After", _MESSAGE),
        },
    }


def intake_paths(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: add PUT/POST /payment/status/ and the notify URL."""
    result.setdefault("paths", {})["/payment/status/"] = {
        "put": _status_operation("payment_status_update"),
        "post": _status_operation("payment_status_create"),
    }
    result["paths"]["/payment/alipay/notify/"] = {"post": {
        "operationId": "alipay_notify",
        "summary": "Alipay's asynchronous notification (form fields as Alipay sends them)",
        "tags": ["payment"],
        "security": [],
        "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "additionalProperties": {"type": "string"},
            "required": ["sign", "out_trade_no", "notify_id"]}}}},
        "responses": {"200": _text("success: stored"), "400": _text("fail: not Alipay's"),
                      "413": _text("fail: larger than any notification"),
                      "429": _text("fail: too many refused requests from this client"),
                      "503": _text("fail: not stored now; Alipay delivers again")},
    }}
    return result
