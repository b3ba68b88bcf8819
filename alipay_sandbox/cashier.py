"""HTML pages of the sandbox cashier (what the buyer's browser sees)."""

from __future__ import annotations

import hashlib
from html import escape
from typing import Any
from urllib.parse import SplitResult, quote, urlencode, urlsplit, urlunsplit

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
# Alipay's desktop cashier: the order on top, a QR code to scan with the app on one side and
# the account log-in on the other; the panels stack on a narrow window.
DESKTOP_STYLE = (
    "body[data-cashier=page]{max-width:62em;margin:1.5em auto}"
    ".brand{color:#1677ff;font-weight:bold;font-size:1.2em}"
    ".order{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;"
    "gap:0 1em;border-bottom:1px solid #ddd;margin-bottom:1em}"
    ".order>*{min-width:0;overflow-wrap:anywhere}"
    ".panels{display:flex;flex-wrap:wrap;gap:1.5em}"
    ".panel{flex:1 1 20em;border:1px solid #ddd;border-radius:6px;padding:1em 1.5em}"
    ".panel h2{font-size:1.1em;margin-top:0}#qr-code{display:block;width:12em;height:12em}"
    "label{display:block;margin:.6em 0 .2em}input{font-size:1em;padding:.4em;width:100%}"
    "#pay-button{background:#1677ff;color:#fff;border:0;border-radius:4px;margin-top:1em}"
)
# Alipay's mobile web cashier (手机网站支付): one column, full-width buttons a thumb can hit.
WAP_STYLE = (
    "body[data-cashier=wap]{max-width:30em;margin:0 auto;padding:0 1em 2em;font-size:17px}"
    ".cashier-bar{display:flex;align-items:center;gap:.5em;min-height:3em;"
    "border-bottom:1px solid #eee;margin-bottom:1em}"
    ".cashier-bar a{display:inline-block;padding:.75em .5em .75em 0;min-height:44px;"
    "text-decoration:none;color:#1677ff}"
    ".wap-form{display:block;margin:0 0 .8em}"
    ".wap-form button{display:block;width:100%;min-height:48px;margin:0;font-size:1.1em;"
    "border-radius:8px;border:1px solid #1677ff;background:#fff;color:#1677ff}"
    ".wap-form #pay-button{background:#1677ff;color:#fff}"
    ".wap-form #cancel-button{border-color:#ccc;color:#555}"
    "table{width:100%;table-layout:fixed}table td:first-child{width:6.5em}"
    "#subject{overflow-wrap:anywhere}"
)

# What the buyer reads for Alipay's trade statuses.
STATUS_WORDS = {
    "WAIT_BUYER_PAY": "Waiting for payment",
    "TRADE_SUCCESS": "Paid",
    "TRADE_CLOSED": "Closed",
    "TRADE_FINISHED": "Finished",
}
WAP_PAY = "alipay.trade.wap.pay"
SANDBOX_BUYER = "buyer@sandbox.com"


def _page(title: str, body: str, cashier: str = "", style: str = "") -> str:
    marker = f' data-cashier="{escape(cashier)}"' if cashier else ""
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - Alipay sandbox</title><style>{STYLE}{style}</style></head>"
        f"<body{marker}><p><small>Alipay sandbox (local test gateway)</small></p>"
        f"{body}</body></html>"
    )


def cashier_kind(trade: dict[str, Any]) -> str:
    """``"wap"`` for a mobile-web trade, ``"page"`` for a desktop one (the page marker)."""
    return "wap" if trade.get("method") == WAP_PAY else "page"


def cashier_path(out_trade_no: str) -> str:
    return "/cashier/" + quote(out_trade_no, safe="")


def _web_url(url: str) -> SplitResult | None:
    """An http(s) URL without its credentials (never repeated in a link); None otherwise."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. an unclosed IPv6 bracket: nowhere to go
        return None
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https") or not host:
        return None
    return parts._replace(netloc=host)


def back_to_shop_url(trade: dict[str, Any]) -> str:
    """Where "Back to the shop" leads ('' when nowhere): a wap trade's ``quit_url``; else
    (page.pay has no quit_url) its ``return_url`` with only ``out_trade_no`` appended,
    unsigned, so that the shop can send the buyer to the order."""
    if cashier_kind(trade) == "wap":
        quit_url = _web_url(trade.get("quit_url") or "")
        if quit_url is not None:
            return urlunsplit(quit_url)
    back = _web_url(trade.get("return_url") or "")
    if back is None:
        return ""
    extra = urlencode({"out_trade_no": trade["out_trade_no"]})
    joiner = "&" if back.query and not back.query.endswith("&") else ""
    return urlunsplit(back._replace(query=back.query + joiner + extra))


def _details(trade: dict[str, Any]) -> str:
    return (
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
    )


def _qr_svg(seed: str, size: int = 25) -> str:
    """A QR-code-like picture (finder squares, modules from a hash): scanning is simulated."""
    bits = "".join(
        f"{byte:08b}"
        for i in range(size * size // 256 + 1)
        for byte in hashlib.sha256(f"{seed}:{i}".encode()).digest()
    )
    cells = []
    for row in range(size):
        for col in range(size):
            finder = next(
                (
                    (row - r0, col - c0)
                    for r0, c0 in ((0, 0), (0, size - 7), (size - 7, 0))
                    if 0 <= row - r0 < 7 and 0 <= col - c0 < 7
                ),
                None,
            )
            if finder is not None:
                r, c = finder
                dark = r in (0, 6) or c in (0, 6) or (2 <= r <= 4 and 2 <= c <= 4)
            else:
                dark = bits[row * size + col] == "1"
            if dark:
                cells.append(f"M{col} {row}h1v1h-1z")
    return (
        f'<svg id="qr-code" viewBox="-2 -2 {size + 4} {size + 4}" role="img" '
        f'aria-label="QR code for this payment" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="-2" y="-2" width="{size + 4}" height="{size + 4}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(cells)}"/></svg>'
    )


def cashier_page(trade: dict[str, Any]) -> str:
    if cashier_kind(trade) == "wap":
        return wap_cashier_page(trade)
    return desktop_cashier_page(trade)


def desktop_cashier_page(trade: dict[str, Any]) -> str:
    """page.pay: Alipay's desktop cashier."""
    path = cashier_path(trade["out_trade_no"])
    body = (
        '<p class="brand">Alipay</p>'
        '<h1 id="cashier-title">Alipay desktop cashier</h1>'
        '<div class="order">'
        f'<h2 id="subject">{escape(trade["subject"])}</h2>'
        f'<p class="amount" id="total-amount">¥ {escape(trade["total_amount"])}</p>'
        "</div>"
        + _details(trade)
        + '<div class="panels">'
        '<section class="panel" id="qr-panel"><h2>Scan to pay</h2>'
        + _qr_svg(trade["out_trade_no"])
        + "<p>Open the Alipay app and scan the code to pay.</p>"
        "<p><small>Sandbox: the code is a picture; pay with the account on the right."
        "</small></p></section>"
        '<section class="panel" id="login-panel"><h2>Log in to your Alipay account to pay</h2>'
        f'<form method="post" action="{escape(path)}/pay" id="login-form">'
        '<label for="account">Account (email or mobile number)</label>'
        f'<input id="account" name="account" value="{SANDBOX_BUYER}" readonly>'
        '<label for="password">Payment password</label>'
        '<input id="password" name="password" type="password" value="sandbox" readonly>'
        '<button type="submit" id="pay-button">Pay</button></form>'
        f'<form method="post" action="{escape(path)}/cancel" style="display:inline">'
        '<button type="submit" id="cancel-button">Cancel</button></form>'
        "</section></div>"
    )
    return _page("Cashier", body, "page", DESKTOP_STYLE)


def wap_cashier_page(trade: dict[str, Any]) -> str:
    """wap.pay: Alipay's mobile web cashier (手机网站支付)."""
    path = cashier_path(trade["out_trade_no"])
    quit_url = back_to_shop_url(trade)
    confirmed = bool(trade.get("confirmed", 1))
    body = (
        '<div class="cashier-bar">'
        + (
            f'<a id="quit-to-shop" href="{escape(quit_url)}">‹ Back to the shop</a>'
            if quit_url
            else ""
        )
        + "</div>"
        '<h1 id="cashier-title">Alipay mobile cashier</h1>'
        f'<p id="subject">{escape(trade["subject"])}</p>'
        f'<p class="amount" id="total-amount">¥ {escape(trade["total_amount"])}</p>'
        + _details(trade)
        + f'<form method="post" action="{escape(path)}/pay" class="wap-form">'
        '<button type="submit" id="pay-button">Open Alipay to pay</button></form>'
        + (
            f'<p id="logged-in">Logged in as {SANDBOX_BUYER}: confirm with Pay.</p>'
            if confirmed
            else f'<form method="post" action="{escape(path)}/confirm" class="wap-form">'
            '<button type="submit" id="confirm-button">Log in and pay in the browser</button>'
            "</form>"
        )
        + f'<form method="post" action="{escape(path)}/cancel" class="wap-form">'
        '<button type="submit" id="cancel-button">Cancel</button></form>'
    )
    return _page("Mobile cashier", body, "wap", WAP_STYLE)


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


def _back_link(trade: dict[str, Any]) -> str:
    url = back_to_shop_url(trade)
    if not url:
        return ""
    return f'<p><a id="back-to-shop" href="{escape(url)}">Back to the shop</a></p>'


def paid_page(trade: dict[str, Any]) -> str:
    body = (
        '<h1 id="payment-done">Payment done</h1>'
        f"<p>{escape(trade['subject'])}: ¥ {escape(trade['total_amount'])} paid, "
        f'trade <span class="code">{escape(trade["trade_no"] or "")}</span>.</p>'
        "<p>You may close this page.</p>" + _back_link(trade)
    )
    return _page("Payment done", body, cashier_kind(trade))


def already_paid_page(trade: dict[str, Any]) -> str:
    """A paid trade's link opened again (Back after paying, a reload): Alipay refuses it with
    ACQ.TRADE_HAS_SUCCESS; the buyer is told it is paid and given the way back."""
    body = (
        '<h1 id="already-paid">This order is already paid</h1>'
        f'<p>Order <span class="code" id="out-trade-no">{escape(trade["out_trade_no"])}</span>'
        f" ({escape(trade['subject'])}, ¥ {escape(trade['total_amount'])}) was paid at "
        f"{escape(trade['gmt_payment'])} (Beijing time), "
        f'trade <span class="code" id="trade-no">{escape(trade["trade_no"] or "")}</span>. '
        "It cannot be paid again.</p>"
        + _back_link(trade)
        + '<p><small>code <span class="code" id="error-code">40004</span> sub_code '
        '<span class="code" id="error-sub-code">ACQ.TRADE_HAS_SUCCESS</span> 交易已被支付'
        "</small></p>"
    )
    return _page("Already paid", body, cashier_kind(trade))


def cancelled_page(trade: dict[str, Any]) -> str:
    path = cashier_path(trade["out_trade_no"])
    body = (
        '<h1 id="payment-cancelled">Payment cancelled</h1>'
        f'<p>Order <span class="code">{escape(trade["out_trade_no"])}</span> was not paid.</p>'
        + _back_link(trade)
        + f'<p><a id="back-to-cashier" href="{escape(path)}">Back to the cashier</a></p>'
    )
    return _page("Payment cancelled", body, cashier_kind(trade))


def index_page(control: bool) -> str:
    body = (
        '<h1>Alipay sandbox</h1><p>Gateway: <span class="code">/gateway.do</span></p>'
        f"<p>Control API: {'on' if control else 'off'}</p>"
    )
    return _page("Alipay sandbox", body)


def not_found_page() -> str:
    return _page("Not found", "<h1>Not found</h1>")
