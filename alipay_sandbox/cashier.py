"""HTML pages of the sandbox cashier (what the buyer's browser sees)."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import ApiError, TradeExpired

STYLE = (
    "*{box-sizing:border-box}"
    "body{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;color:#222}"
    "h1{color:#1677ff;font-size:1.4em;overflow-wrap:anywhere}.amount{font-size:2em;font-weight:bold}"
    "button{font-size:1.1em;padding:.5em 1.5em;margin:0 1em .5em 0}"
    "table{margin-bottom:1em}table td{padding:.2em .8em .2em 0;vertical-align:top}"
    ".code{font-family:monospace;overflow-wrap:anywhere}"
    "@media (max-width:30em){body{margin:1.5em auto}}"
)

# What the buyer reads for Alipay's trade statuses.
STATUS_WORDS = {
    "WAIT_BUYER_PAY": "Waiting for payment",
    "TRADE_SUCCESS": "Paid",
    "TRADE_CLOSED": "Closed",
    "TRADE_FINISHED": "Finished",
}


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - Alipay sandbox</title><style>{STYLE}</style></head>"
        f"<body><p><small>Alipay sandbox (local test gateway)</small></p>{body}</body></html>"
    )


def cashier_path(out_trade_no: str) -> str:
    return "/cashier/" + quote(out_trade_no, safe="")


def cashier_page(trade: dict[str, Any]) -> str:
    path = cashier_path(trade["out_trade_no"])
    body = (
        f"<h1>{escape(trade['subject'])}</h1>"
        f'<p class="amount" id="total-amount">¥ {escape(trade["total_amount"])}</p>'
        "<table>"
        f'<tr><td>Order</td><td class="code" id="out-trade-no">'
        f"{escape(trade['out_trade_no'])}</td></tr>"
        f'<tr><td>Status</td><td id="trade-status" data-status="{escape(trade["status"])}">'
        f"{escape(STATUS_WORDS.get(trade['status'], trade['status']))}</td></tr>"
        + (
            f'<tr><td>Pay before</td><td id="time-expire">{escape(trade["time_expire"])}'
            " (Beijing time)</td></tr>"
            if trade.get("time_expire")
            else ""
        )
        + "</table>"
        f'<form method="post" action="{escape(path)}/pay" style="display:inline">'
        '<button type="submit" id="pay-button">Pay</button></form>'
        f'<form method="post" action="{escape(path)}/cancel" style="display:inline">'
        '<button type="submit" id="cancel-button">Cancel</button></form>'
    )
    return _page("Cashier", body)


def error_page(error: ApiError) -> str:
    if isinstance(error, TradeExpired):
        heading = (
            '<h1 id="payment-expired">Payment link expired</h1>'
            f'<p>This payment had to be made before <span id="time-expire">'
            f"{escape(error.time_expire)}</span> (Beijing time). It can no longer be paid: "
            "ask the shop for a new order.</p>"
        )
    else:
        heading = "<h1>Payment request refused</h1>"
    body = heading + (
        f'<p>code <span class="code" id="error-code">{escape(error.code)}</span> '
        f"{escape(error.msg)}</p>"
        f'<p>sub_code <span class="code" id="error-sub-code">{escape(error.sub_code)}</span></p>'
        f'<p id="error-message">{escape(error.sub_msg)}</p>'
    )
    return _page("Error", body)


def paid_page(trade: dict[str, Any]) -> str:
    body = (
        '<h1 id="payment-done">Payment done</h1>'
        f"<p>{escape(trade['subject'])}: ¥ {escape(trade['total_amount'])} paid, "
        f'trade <span class="code">{escape(trade["trade_no"] or "")}</span>.</p>'
        "<p>You may close this page.</p>"
    )
    return _page("Payment done", body)


def shop_url(return_url: str) -> str:
    """The shop's home: the origin of the trade's return_url ('' when it has none)."""
    try:
        parts = urlsplit(return_url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nowhere to go back to
        return ""
    host = parts.netloc.rpartition("@")[2]  # never repeat credentials in a link
    if parts.scheme not in ("http", "https") or not host:
        return ""
    return f"{parts.scheme}://{host}/"


def cancelled_page(trade: dict[str, Any]) -> str:
    path = cashier_path(trade["out_trade_no"])
    shop = shop_url(trade.get("return_url") or "")
    body = (
        '<h1 id="payment-cancelled">Payment cancelled</h1>'
        f'<p>Order <span class="code">{escape(trade["out_trade_no"])}</span> was not paid.</p>'
        + (f'<p><a id="back-to-shop" href="{escape(shop)}">Back to the shop</a></p>'
           if shop else "")
        + f'<p><a id="back-to-cashier" href="{escape(path)}">Back to the cashier</a></p>'
    )
    return _page("Payment cancelled", body)


def index_page(control: bool) -> str:
    body = (
        '<h1>Alipay sandbox</h1><p>Gateway: <span class="code">/gateway.do</span></p>'
        f"<p>Control API: {'on' if control else 'off'}</p>"
    )
    return _page("Alipay sandbox", body)


def not_found_page() -> str:
    return _page("Not found", "<h1>Not found</h1>")
