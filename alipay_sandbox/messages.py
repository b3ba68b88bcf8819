"""What the sandbox signs and sends the merchant: return parameters and notifications.

As Alipay: every parameter but ``sign`` and ``sign_type`` signed, empty ones included; values
in the charset of the merchant's request (the trade's), signed over their bytes in it.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

from . import signing
from .config import Config
from .notifier import new_notify_id
from .runtime import TIME_FORMAT, Runtime

# Parameters Alipay sends empty now and then (it signs them all the same).
EMPTY_PARAMS = ("passback_params", "isv_ticket")


def in_charset(params: dict[str, str], charset: str) -> dict[str, str]:
    """The values as the receiver will read them in ``charset`` (unmappable characters: ?)."""
    codec = signing.codec_for(charset) or "utf-8"
    if codec == "utf-8":
        return params
    return {k: v.encode(codec, "replace").decode(codec) for k, v in params.items()}


class Messages:
    def __init__(self, config: Config, signer: signing.Signer, runtime: Runtime) -> None:
        self.config = config
        self.signer = signer
        self.runtime = runtime

    def return_params(self, trade: dict[str, Any], paid_at: str) -> dict[str, str]:
        """The signed parameters of the return redirect of a trade just paid."""
        charset = trade["charset"] or "utf-8"
        params = {
            "charset": charset,
            "out_trade_no": trade["out_trade_no"],
            "method": trade["method"] + ".return",
            "total_amount": trade["total_amount"],
            "trade_no": trade["trade_no"],
            "auth_app_id": trade["app_id"],
            "version": "1.0",
            "app_id": trade["app_id"],
            "sign_type": trade["sign_type"],
            "seller_id": self.config.seller_id,
            "timestamp": paid_at,
        }
        return self._signed(params, trade)

    def notification(
        self, trade: dict[str, Any], status: str, out_biz_no: str = ""
    ) -> dict[str, str]:
        """The signed form of a ``trade_status_sync`` notification (empty fields left out)."""
        moment = self.runtime.cn_now()
        paid = bool(trade["gmt_payment"])
        total = trade["total_amount"]
        received = total if paid else ""
        refund_fee = trade["refund_fee"] if Decimal(trade["refund_fee"]) > 0 else ""
        params = {
            "notify_time": moment.strftime(TIME_FORMAT),
            "notify_type": "trade_status_sync",
            "notify_id": new_notify_id(moment),
            "app_id": trade["app_id"],
            "auth_app_id": trade["app_id"],
            "charset": trade.get("charset") or "utf-8",
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
            "receipt_amount": received,
            "invoice_amount": received,
            "buyer_pay_amount": received,
            "point_amount": "0.00" if paid else "",
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
            )
            if paid
            else "",
        }
        return self._signed({key: value for key, value in params.items() if value}, trade)

    def _signed(self, params: dict[str, str], trade: dict[str, Any]) -> dict[str, str]:
        params = self._maybe_empty(in_charset(params, params["charset"]))
        codec = signing.codec_for(params["charset"]) or "utf-8"
        # The current key: real notifications do not name the certificate they are signed with.
        key = self.signer.current().key
        signature = signing.sign_params(key, params, trade["sign_type"], encoding=codec)
        return {**params, "sign": signature}

    def _maybe_empty(self, params: dict[str, str]) -> dict[str, str]:
        """Now and then (empty_param_rate) an empty parameter, as Alipay sends them."""
        rate = self.runtime.snapshot().empty_param_rate
        if rate > 0 and random.random() < rate:
            name = random.choice([n for n in EMPTY_PARAMS if n not in params] or ["isv_ticket"])
            params = {**params, name: ""}
        return params
