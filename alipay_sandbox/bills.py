"""Trade bills: short-lived download tokens and zips of GBK-encoded CSV, like Alipay's."""

from __future__ import annotations

import csv
import io
import re
import secrets
import threading
import time
import zipfile
from decimal import Decimal
from typing import Any

from .errors import business
from .store import Store
from .trades import cn_time, money

TOKEN_TTL_S = 60.0
DATE_RE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
COLUMNS = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
]


class Bills:
    def __init__(self, store: Store, seller_id: str) -> None:
        self.store = store
        self.seller_id = seller_id
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, biz: dict[str, Any], base_url: str) -> dict[str, Any]:
        bill_type = str(biz.get("bill_type") or "")
        bill_date = str(biz.get("bill_date") or "")
        if bill_type != "trade":
            raise business("isp.bill_type_not_exist", "账单类型不存在，仅支持 trade")
        if not DATE_RE.match(bill_date):
            raise business("isp.bill_date_format_error", "账单日期格式不正确")
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (bill_date, now + TOKEN_TTL_S)
        return {
            "code": "10000",
            "msg": "Success",
            "bill_download_url": f"{base_url}/bills/{token}.zip",
        }

    def download(self, token: str) -> tuple[str, bytes] | None:
        """``(file name, zip bytes)`` for a valid token, else None."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.monotonic():
            return None
        bill_date = entry[0]
        compact = bill_date.replace("-", "")
        stem = f"{self.seller_id}0156_{compact}"
        detail, summary = self._render(bill_date)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{stem}_业务明细.csv", detail.encode("gbk", "replace"))
            archive.writestr(f"{stem}_业务明细(汇总).csv", summary.encode("gbk", "replace"))
        return f"{stem}.csv.zip", buffer.getvalue()

    def _render(self, bill_date: str) -> tuple[str, str]:
        rows: list[list[str]] = []
        paid_total = Decimal("0")
        refund_total = Decimal("0")
        trades = self.store.trades_paid_on(bill_date)
        for trade in trades:
            paid_total += Decimal(trade["total_amount"])
            rows.append(self._row(trade, "交易", trade["gmt_payment"], trade["total_amount"], ""))
        refunds = self.store.refunds_on(bill_date)
        for refund in refunds:
            refund_total += Decimal(refund["refund_amount"])
            amount = "-" + refund["refund_amount"]
            rows.append(
                self._row(refund, "退款", refund["gmt_refund"], amount, refund["out_request_no"])
            )
        out = io.StringIO()
        out.write("#支付宝业务明细查询\n")
        out.write(f"#账号：[{self.seller_id}0156]\n")
        out.write(f"#起始日期：[{bill_date}]   终止日期：[{bill_date}]\n")
        out.write(
            "#-----------------------------------------业务明细列表----------------------------------------\n"
        )
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        out.write(
            "#-----------------------------------------业务明细列表结束------------------------------------\n"
        )
        out.write(
            f"#交易合计：{len(trades)}笔，商家实收：{money(paid_total)}元，商家优惠：0.00元\n"
        )
        out.write(
            f"#退款合计：{len(refunds)}笔，商家实收：-{money(refund_total)}元，商家优惠：0.00元\n"
        )
        out.write(f"#导出时间：[{cn_time()}]\n")
        summary = io.StringIO()
        summary.write("#支付宝业务汇总查询\n")
        summary_writer = csv.writer(summary, lineterminator="\n")
        summary_writer.writerow(["交易笔数", "退款笔数", "订单金额（元）", "商家实收（元）"])
        summary_writer.writerow(
            [len(trades), len(refunds), money(paid_total), money(paid_total - refund_total)]
        )
        return out.getvalue(), summary.getvalue()

    @staticmethod
    def _row(
        item: dict[str, Any], kind: str, finished: str, received: str, request_no: str
    ) -> list[str]:
        return [
            item["trade_no"] or "",
            item["out_trade_no"],
            kind,
            item["subject"],
            item["gmt_create"],
            finished,
            "",
            "",
            "",
            "",
            item.get("buyer_logon_id", ""),
            item["total_amount"],
            received,
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "",
            "0.00",
            "0.00",
            request_no,
            "0.00",
            "0.00",
            "",
        ]
