"""Trade life cycle: open (cashier), pay, close, refund, and the notifications they cause."""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa

from . import signing
from .config import Config
from .errors import business, trade_not_exist
from .notifier import Notifier, new_notify_id
from .store import Store

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_AMOUNT = Decimal("100000000")
PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")


def cn_now() -> datetime:
    return datetime.now(CHINA)


def cn_time(moment: datetime | None = None) -> str:
    return (moment or cn_now()).strftime(TIME_FORMAT)


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


def new_trade_no() -> str:
    return cn_now().strftime("%Y%m%d") + f"{secrets.randbelow(10**22):022d}"


def return_url_for(trade: dict[str, Any]) -> str:
    """The full signed return URL of a paid trade ('' without a return_url)."""
    base = trade.get("return_url") or ""
    if not base or not trade.get("return_params"):
        return ""
    query = urlencode(json.loads(trade["return_params"]))
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
        self, config: Config, alipay_key: rsa.RSAPrivateKey, store: Store, notifier: Notifier
    ) -> None:
        self.config = config
        self.key = alipay_key
        self.store = store
        self.notifier = notifier

    # -- lookup ---------------------------------------------------------------------------
    def find(self, biz: dict[str, Any], conn: sqlite3.Connection | None = None) -> dict[str, Any]:
        out_trade_no = str(biz.get("out_trade_no") or "")
        trade_no = str(biz.get("trade_no") or "")
        if not out_trade_no and not trade_no:
            raise business(
                "ACQ.INVALID_PARAMETER", "参数有误 out_trade_no 和 trade_no 不能同时为空"
            )
        trade = self.store.get_trade(out_trade_no or None, trade_no or None, conn=conn)
        if trade is None:
            raise trade_not_exist()
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
        allow_paid: bool = False,
    ) -> dict[str, Any]:
        out_trade_no = str(biz.get("out_trade_no") or "").strip()
        subject = str(biz.get("subject") or "").strip()
        if not out_trade_no or len(out_trade_no) > 64:
            raise business("ACQ.INVALID_PARAMETER", "参数有误 out_trade_no")
        if not subject:
            raise business("ACQ.INVALID_PARAMETER", "参数有误 subject 不能为空")
        amount = money(parse_amount(biz.get("total_amount"), "total_amount"))
        with self.store.write() as conn:
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is None:
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
                    "gmt_create": cn_time(),
                }
                self.store.insert_trade(conn, trade)
                return self.store.get_trade(out_trade_no, conn=conn) or trade
            if trade["total_amount"] != amount or trade["app_id"] != app_id:
                raise business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if trade["gmt_payment"]:
                if allow_paid:
                    return trade
                raise business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if trade["status"] == "TRADE_CLOSED":
                raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            changes = {
                "method": method,
                "subject": subject,
                "return_url": return_url,
                "notify_url": notify_url,
                "sign_type": sign_type,
            }
            self.store.update_trade(conn, out_trade_no, **changes)
            trade.update(changes)
            return trade

    def pay(self, out_trade_no: str) -> PayOutcome:
        with self.store.write() as conn:
            trade = self.store.get_trade(out_trade_no, conn=conn)
            if trade is None:
                raise trade_not_exist()
            if trade["gmt_payment"]:
                return PayOutcome(trade, return_url_for(trade), newly_paid=False)
            if trade["status"] != "WAIT_BUYER_PAY":
                raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            now = cn_time()
            changes: dict[str, Any] = {
                "status": "TRADE_SUCCESS",
                "trade_no": new_trade_no(),
                "gmt_payment": now,
                "buyer_id": "2088" + f"{secrets.randbelow(10**12):012d}",
                "buyer_logon_id": secrets.token_hex(2)[:3] + "***@sandbox.com",
            }
            trade.update(changes)
            params = {
                "charset": "utf-8",
                "out_trade_no": out_trade_no,
                "method": trade["method"] + ".return",
                "total_amount": trade["total_amount"],
                "trade_no": trade["trade_no"],
                "auth_app_id": trade["app_id"],
                "version": "1.0",
                "app_id": trade["app_id"],
                "sign_type": trade["sign_type"],
                "seller_id": self.config.seller_id,
                "timestamp": now,
            }
            params["sign"] = signing.sign_params(self.key, params, trade["sign_type"])
            changes["return_params"] = json.dumps(params, ensure_ascii=False)
            trade["return_params"] = changes["return_params"]
            self.store.update_trade(conn, out_trade_no, **changes)
            self._notify(conn, trade, "TRADE_SUCCESS")
        self.notifier.wake()
        return PayOutcome(trade, return_url_for(trade), newly_paid=True)

    # -- server APIs ----------------------------------------------------------------------
    def query(self, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self.find(biz)
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
        with self.store.write() as conn:
            trade = self.find(biz, conn=conn)
            if trade["status"] != "WAIT_BUYER_PAY":
                raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            self.store.update_trade(
                conn, trade["out_trade_no"], status="TRADE_CLOSED", gmt_close=cn_time()
            )
        return {"code": "10000", "msg": "Success", "out_trade_no": trade["out_trade_no"]}

    def refund(self, biz: dict[str, Any]) -> dict[str, Any]:
        amount = parse_amount(biz.get("refund_amount"), "refund_amount")
        out_request_no = str(biz.get("out_request_no") or "")
        reason = str(biz.get("refund_reason") or "")
        with self.store.write() as conn:
            trade = self.find(biz, conn=conn)
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
            now = cn_time()
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
        self.notifier.wake()
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

    # -- notifications --------------------------------------------------------------------
    def _notify(
        self, conn: sqlite3.Connection, trade: dict[str, Any], status: str, out_biz_no: str = ""
    ) -> None:
        url = trade.get("notify_url") or ""
        if not url:
            return
        total = trade["total_amount"]
        refund_fee = trade["refund_fee"] if Decimal(trade["refund_fee"]) > 0 else ""
        params = {
            "notify_time": cn_time(),
            "notify_type": "trade_status_sync",
            "notify_id": new_notify_id(),
            "app_id": trade["app_id"],
            "auth_app_id": trade["app_id"],
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": trade["sign_type"],
            "trade_no": trade["trade_no"] or "",
            "out_trade_no": trade["out_trade_no"],
            "out_biz_no": out_biz_no,
            "buyer_id": trade["buyer_id"],
            "buyer_logon_id": trade["buyer_logon_id"],
            "seller_id": self.config.seller_id,
            "seller_email": self.config.seller_email,
            "trade_status": status,
            "total_amount": total,
            "receipt_amount": total,
            "invoice_amount": total,
            "buyer_pay_amount": total,
            "point_amount": "0.00",
            "refund_fee": refund_fee,
            "subject": trade["subject"],
            "gmt_create": trade["gmt_create"],
            "gmt_payment": trade["gmt_payment"],
            "gmt_refund": trade["gmt_refund"] if refund_fee else "",
            "gmt_close": trade["gmt_close"],
            "fund_bill_list": json.dumps(
                [{"amount": total, "fundChannel": "ALIPAYACCOUNT"}],
                ensure_ascii=False,
                separators=(",", ":"),
            ),
        }
        params = {key: value for key, value in params.items() if value}
        params["sign"] = signing.sign_params(self.key, params, trade["sign_type"])
        self.notifier.enqueue(
            conn, out_trade_no=trade["out_trade_no"], trade_status=status, url=url, params=params
        )
