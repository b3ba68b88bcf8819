"""Trade life cycle: open (cashier), pay, close, refund, time_expire and the refund window,
and the notifications they cause."""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from . import signing
from .config import Config
from .errors import ApiError, TradeExpired, business, product_code_error, trade_not_exist
from .messages import Messages
from .notifier import Notifier
from .runtime import CHINA, Runtime, parse_cn_time
from .store import Store

MAX_AMOUNT = Decimal("100000000")
PAGE_PAY = "alipay.trade.page.pay"
WAP_PAY = "alipay.trade.wap.pay"
# The sales product code each cashier requires in biz_content (Alipay's documented values).
PRODUCT_CODES = {PAGE_PAY: "FAST_INSTANT_TRADE_PAY", WAP_PAY: "QUICK_WAP_WAY"}
PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")
SWEEP_BATCH = 500


def money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def parse_amount(value: Any, name: str) -> Decimal:
    """A positive amount with at most two decimals, else ACQ.INVALID_PARAMETER."""
    if isinstance(value, bool) or value is None or value == "":
        raise business("ACQ.INVALID_PARAMETER", f"参数有误 {name} 不能为空")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise business("ACQ.INVALID_PARAMETER", f"参数有误 {name} 格式错误") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_AMOUNT:
        raise business("ACQ.INVALID_PARAMETER", f"参数有误 {name} 超出范围")
    if amount != amount.quantize(Decimal("0.01")):
        raise business("ACQ.INVALID_PARAMETER", f"参数有误 {name} 最多两位小数")
    return amount


def parse_time_expire(value: Any) -> tuple[str, float | None]:
    """``(time_expire, Unix seconds)`` from biz_content; ``("", None)`` when absent."""
    if value is None or value == "":
        return "", None
    text = str(value).strip()
    try:
        return text, parse_cn_time(text)
    except ValueError:
        raise business(
            "ACQ.INVALID_PARAMETER", "参数有误 time_expire 格式应为 yyyy-MM-dd HH:mm:ss"
        ) from None


def new_trade_no(moment: datetime) -> str:
    """28 digits like Alipay's: ``yyyyMMdd`` + 20 digits."""
    return moment.strftime("%Y%m%d") + "22001" + f"{secrets.randbelow(10**15):015d}"


def return_url_for(trade: dict[str, Any]) -> str:
    """The full signed return URL of a paid trade ('' without a return_url)."""
    base = trade.get("return_url") or ""
    if not base or not trade.get("return_params"):
        return ""
    params = json.loads(trade["return_params"])
    codec = signing.codec_for(params.get("charset", "utf-8")) or "utf-8"
    query = urlencode(params, encoding=codec)
    if base.endswith(("?", "&")):
        return base + query
    return base + ("&" if "?" in base else "?") + query


@dataclass
class PayOutcome:
    trade: dict[str, Any]
    return_url: str
    newly_paid: bool


class TradeService:
    def __init__(
        self,
        config: Config,
        signer: signing.Signer,
        store: Store,
        notifier: Notifier,
        runtime: Runtime,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.runtime = runtime
        self.messages = Messages(config, signer, runtime)

    # -- lookup ---------------------------------------------------------------------------
    def find(self, biz: dict[str, Any], conn: sqlite3.Connection | None = None) -> dict[str, Any]:
        out_trade_no = str(biz.get("out_trade_no") or "")
        trade_no = str(biz.get("trade_no") or "")
        if not out_trade_no and not trade_no:
            raise business(
                "ACQ.INVALID_PARAMETER", "参数有误 out_trade_no 和 trade_no 不能同时为空"
            )
        trade = self.store.get_trade(out_trade_no or None, trade_no or None, conn=conn)
        if trade is None or not trade["confirmed"]:
            # A wap trade exists at Alipay only once the buyer has confirmed it.
            raise trade_not_exist()
        return trade

    def refresh(self, out_trade_no: str) -> dict[str, Any] | None:
        """The trade, with its time_expire or refund window applied if it has passed."""
        trade = self.store.get_trade(out_trade_no)
        if trade is None or not self._timer_due(trade, self.runtime.now()):
            return trade
        with self.store.write() as conn:
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is not None:
                self._apply_timers(conn, trade, self.runtime.now())
        self.notifier.wake()
        return trade

    # -- cashier --------------------------------------------------------------------------
    def open_trade(
        self,
        *,
        app_id: str,
        method: str,
        biz: dict[str, Any],
        return_url: str,
        notify_url: str,
        sign_type: str,
        charset: str = "utf-8",
        allow_paid: bool = False,
    ) -> dict[str, Any]:
        expected_code = PRODUCT_CODES.get(method)
        product_code = str(biz.get("product_code") or "").strip()
        if expected_code is not None and product_code != expected_code:
            raise product_code_error(method, product_code, expected_code)
        out_trade_no = str(biz.get("out_trade_no") or "").strip()
        subject = str(biz.get("subject") or "").strip()
        if not out_trade_no or len(out_trade_no) > 64:
            raise business("ACQ.INVALID_PARAMETER", "参数有误 out_trade_no")
        if not subject:
            raise business("ACQ.INVALID_PARAMETER", "参数有误 subject 不能为空")
        amount = money(parse_amount(biz.get("total_amount"), "total_amount"))
        time_expire, expire_at = parse_time_expire(biz.get("time_expire"))
        # Only the mobile cashier has a way out before paying (Alipay's page.pay has none).
        quit_url = str(biz.get("quit_url") or "").strip() if method == WAP_PAY else ""
        failure: ApiError | None = None
        with self.store.write() as conn:
            now = self.runtime.now()
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is not None and not trade["confirmed"]:
                # Alipay never heard of an unconfirmed wap trade: this link starts afresh.
                self.store.delete_trade(conn, out_trade_no)
                trade = None
            if trade is None:
                if expire_at is not None and expire_at <= now:
                    # Never opened before its deadline: no trade is created.
                    raise TradeExpired(time_expire)
                trade = {
                    "out_trade_no": out_trade_no,
                    "app_id": app_id,
                    "method": method,
                    "subject": subject,
                    "total_amount": amount,
                    "status": "WAIT_BUYER_PAY",
                    "return_url": return_url,
                    "notify_url": notify_url,
                    "sign_type": sign_type,
                    "charset": charset,
                    "gmt_create": self.runtime.cn_time(now),
                    "time_expire": time_expire,
                    "expire_at": expire_at,
                    "quit_url": quit_url,
                    # page.pay: opening the cashier creates the trade; wap.pay: confirming it.
                    "confirmed": 0 if method == WAP_PAY else 1,
                }
                self.store.insert_trade(conn, trade)
                return self.store.get_trade(out_trade_no, conn=conn) or trade
            if trade["total_amount"] != amount or trade["app_id"] != app_id:
                raise business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if trade["gmt_payment"]:
                if allow_paid:
                    return trade
                raise business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            # The deadline is the one the trade was created with; a later link cannot move it.
            self._apply_timers(conn, trade, now)
            if trade["status"] == "TRADE_CLOSED":
                failure = self.closed_error(trade, now)
            else:
                changes = {
                    "method": method,
                    "subject": subject,
                    "return_url": return_url,
                    "notify_url": notify_url,
                    "sign_type": sign_type,
                    "charset": charset,
                    "quit_url": quit_url,
                }
                self.store.update_trade(conn, out_trade_no, **changes)
                trade.update(changes)
        if failure is not None:
            self.notifier.wake()
            raise failure
        return trade

    def confirm(self, out_trade_no: str) -> dict[str, Any]:
        """The buyer logs in at the cashier: a wap trade comes to exist at Alipay
        (``WAIT_BUYER_PAY``, visible to query and close). Nothing changes for a page trade
        or one already confirmed."""
        failure: ApiError | None = None
        with self.store.write() as conn:
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is None:
                raise trade_not_exist()
            now = self.runtime.now()
            self._apply_timers(conn, trade, now)
            if trade["status"] == "TRADE_CLOSED" and not trade["gmt_payment"]:
                failure = self.closed_error(trade, now)
            elif not trade["confirmed"]:
                self._confirm_locked(conn, trade, now)
        self.notifier.wake()
        if failure is not None:
            raise failure
        return trade

    def _confirm_locked(self, conn: sqlite3.Connection, trade: dict[str, Any], now: float) -> None:
        changes = {"confirmed": 1, "gmt_create": self.runtime.cn_time(now)}
        self.store.update_trade(conn, trade["out_trade_no"], **changes)
        trade.update(changes)

    def pay(self, out_trade_no: str) -> PayOutcome:
        failure: ApiError | None = None
        with self.store.write() as conn:
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is None:
                raise trade_not_exist()
            if trade["gmt_payment"]:
                return PayOutcome(trade, return_url_for(trade), newly_paid=False)
            now = self.runtime.now()
            self._apply_timers(conn, trade, now)
            if trade["status"] != "WAIT_BUYER_PAY":
                failure = self.closed_error(trade, now)
            else:
                self._pay_locked(conn, trade, now)
        self.notifier.wake()
        if failure is not None:
            raise failure
        return PayOutcome(trade, return_url_for(trade), newly_paid=True)

    def _pay_locked(self, conn: sqlite3.Connection, trade: dict[str, Any], now: float) -> None:
        if not trade["confirmed"]:  # paying in the Alipay app confirms and pays at once
            self._confirm_locked(conn, trade, now)
        paid_at = self.runtime.cn_time(now)
        settings = self.runtime.snapshot()
        changes: dict[str, Any] = {
            "status": "TRADE_SUCCESS",
            "trade_no": new_trade_no(datetime.fromtimestamp(now, CHINA)),
            "gmt_payment": paid_at,
            "buyer_id": "2088" + f"{secrets.randbelow(10**12):012d}",
            "buyer_logon_id": secrets.token_hex(2)[:3] + "***@sandbox.com",
            "finish_at": now + settings.refund_window_s,
        }
        trade.update(changes)
        params = self.messages.return_params(trade, paid_at)
        changes["return_params"] = json.dumps(params, ensure_ascii=False)
        trade["return_params"] = changes["return_params"]
        self.store.update_trade(conn, trade["out_trade_no"], **changes)
        self._notify(conn, trade, "TRADE_SUCCESS")

    # -- server APIs ----------------------------------------------------------------------
    def query(self, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self.find(biz)
        if self._timer_due(trade, self.runtime.now()):
            trade = self.refresh(trade["out_trade_no"]) or trade
        node: dict[str, Any] = {"code": "10000", "msg": "Success"}
        paid = bool(trade["gmt_payment"])
        if paid:
            node["trade_no"] = trade["trade_no"]
        node["out_trade_no"] = trade["out_trade_no"]
        if paid:
            node["buyer_logon_id"] = trade["buyer_logon_id"]
        node["trade_status"] = trade["status"]
        node["total_amount"] = trade["total_amount"]
        pay_amount = trade["total_amount"] if paid else "0.00"
        node.update(
            buyer_pay_amount=pay_amount,
            point_amount="0.00",
            invoice_amount=pay_amount,
            receipt_amount=pay_amount,
        )
        if paid:
            node["send_pay_date"] = trade["gmt_payment"]
            node["buyer_user_id"] = trade["buyer_id"]
            node["fund_bill_list"] = [
                {"amount": trade["total_amount"], "fund_channel": "ALIPAYACCOUNT"}
            ]
        return node

    def close(self, biz: dict[str, Any]) -> dict[str, Any]:
        failure: ApiError | None = None
        with self.store.write() as conn:
            trade = self.find(biz, conn=conn)
            now = self.runtime.now()
            self._apply_timers(conn, trade, now)
            if trade["status"] != "WAIT_BUYER_PAY":
                failure = business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            else:
                closed = {"status": "TRADE_CLOSED", "gmt_close": self.runtime.cn_time(now)}
                self.store.update_trade(conn, trade["out_trade_no"], **closed)
                trade.update(closed)
                self._notify(conn, trade, "TRADE_CLOSED")
        self.notifier.wake()
        if failure is not None:
            raise failure
        return {"code": "10000", "msg": "Success", "out_trade_no": trade["out_trade_no"]}

    def refund(self, biz: dict[str, Any]) -> dict[str, Any]:
        amount = parse_amount(biz.get("refund_amount"), "refund_amount")
        out_request_no = str(biz.get("out_request_no") or "")
        reason = str(biz.get("refund_reason") or "")
        failure: ApiError | None = None
        node: dict[str, Any] = {}
        with self.store.write() as conn:
            trade = self.find(biz, conn=conn)
            self._apply_timers(conn, trade, self.runtime.now())
            try:
                node = self._refund_locked(conn, trade, amount, out_request_no, reason)
            except ApiError as exc:  # commit what the timers changed, then answer the error
                failure = exc
        self.notifier.wake()
        if failure is not None:
            raise failure
        return node

    def _refund_locked(
        self,
        conn: sqlite3.Connection,
        trade: dict[str, Any],
        amount: Decimal,
        out_request_no: str,
        reason: str,
    ) -> dict[str, Any]:
        existing = self.store.get_refund(trade["out_trade_no"], out_request_no, conn=conn)
        if existing is not None:
            if Decimal(existing["refund_amount"]) != amount:
                raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与原请求不一致")
            return self._refund_node(trade, "N", existing)
        if trade["status"] != "TRADE_SUCCESS":
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        total = Decimal(trade["total_amount"])
        refunded = Decimal(trade["refund_fee"])
        if amount > total - refunded:
            raise business("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额超限")
        now = self.runtime.cn_time()
        refund = {
            "out_trade_no": trade["out_trade_no"],
            "out_request_no": out_request_no,
            "refund_amount": money(amount),
            "refund_reason": reason,
            "gmt_refund": now,
        }
        self.store.insert_refund(conn, refund)
        cumulative = refunded + amount
        changes: dict[str, Any] = {"refund_fee": money(cumulative), "gmt_refund": now}
        if cumulative == total:
            changes.update(status="TRADE_CLOSED", gmt_close=now)
        self.store.update_trade(conn, trade["out_trade_no"], **changes)
        trade.update(changes)
        self._notify(conn, trade, trade["status"], out_biz_no=out_request_no)
        return self._refund_node(trade, "Y", refund)

    def _refund_node(
        self, trade: dict[str, Any], fund_change: str, refund: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "buyer_logon_id": trade["buyer_logon_id"],
            "fund_change": fund_change,
            "refund_fee": trade["refund_fee"],
            "gmt_refund_pay": refund["gmt_refund"],
            "buyer_user_id": trade["buyer_id"],
            "send_back_fee": refund["refund_amount"],
        }

    def refund_query(self, biz: dict[str, Any]) -> dict[str, Any]:
        if "out_request_no" not in biz:
            raise business("ACQ.INVALID_PARAMETER", "参数有误 out_request_no 不能为空")
        trade = self.find(biz)
        out_request_no = str(biz.get("out_request_no") or "")
        node: dict[str, Any] = {"code": "10000", "msg": "Success"}
        if trade["trade_no"]:
            node["trade_no"] = trade["trade_no"]
        node["out_trade_no"] = trade["out_trade_no"]
        node["out_request_no"] = out_request_no
        refund = self.store.get_refund(trade["out_trade_no"], out_request_no)
        if refund is not None:
            node["total_amount"] = trade["total_amount"]
            node["refund_amount"] = refund["refund_amount"]
            node["refund_status"] = "REFUND_SUCCESS"
            node["gmt_refund_pay"] = refund["gmt_refund"]
        return node

    # -- time_expire and the refund window ------------------------------------------------
    @staticmethod
    def _timer_due(trade: dict[str, Any], now: float) -> bool:
        if trade["status"] == "WAIT_BUYER_PAY":
            return trade["expire_at"] is not None and trade["expire_at"] <= now
        if trade["status"] == "TRADE_SUCCESS":
            return trade["finish_at"] is not None and trade["finish_at"] <= now
        return False

    def _apply_timers(self, conn: sqlite3.Connection, trade: dict[str, Any], now: float) -> bool:
        """Close an unpaid trade past its time_expire, finish a paid one past its refund
        window (each with its notification). True when the trade changed."""
        if not self._timer_due(trade, now):
            return False
        if trade["status"] == "WAIT_BUYER_PAY":
            changes = {"status": "TRADE_CLOSED", "gmt_close": trade["time_expire"]}
            status = "TRADE_CLOSED"
        else:
            changes = {"status": "TRADE_FINISHED", "gmt_close": self.runtime.cn_time(now)}
            status = "TRADE_FINISHED"
        self.store.update_trade(conn, trade["out_trade_no"], **changes)
        trade.update(changes)
        if trade["confirmed"]:  # Alipay says nothing of a wap trade it never knew
            self._notify(conn, trade, status)
        return True

    def closed_error(self, trade: dict[str, Any], now: float | None = None) -> ApiError:
        """Why a closed trade cannot be paid: its time_expire passed, or it was closed."""
        now = self.runtime.now() if now is None else now
        expired = trade["expire_at"] is not None and trade["expire_at"] <= now
        if trade["status"] == "TRADE_CLOSED" and expired and not trade["gmt_payment"]:
            return TradeExpired(trade["time_expire"])
        return business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")

    def sweep(self) -> int:
        """Apply the time_expire and refund windows that have passed; the number applied."""
        now = self.runtime.now()
        due = self.store.due_timers(now, SWEEP_BATCH)
        if not due:
            return 0
        applied = 0
        with self.store.write() as conn:
            for out_trade_no in due:
                trade = self.store.get_trade(out_trade_no, conn=conn)
                if trade is not None and self._apply_timers(conn, trade, now):
                    applied += 1
        if applied:
            self.notifier.wake()
        return applied

    # -- notifications --------------------------------------------------------------------
    def _notify(
        self, conn: sqlite3.Connection, trade: dict[str, Any], status: str, out_biz_no: str = ""
    ) -> None:
        url = trade.get("notify_url") or ""
        if not url:
            return
        params = self.messages.notification(trade, status, out_biz_no)
        self.notifier.enqueue(
            conn, out_trade_no=trade["out_trade_no"], trade_status=status, url=url, params=params
        )
