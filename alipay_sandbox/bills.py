"""Trade bills: short-lived download URLs to zips of GBK-encoded CSV, like Alipay's.

A bill is for a past day (``yyyy-MM-dd``) or month (``yyyy-MM``), Beijing time (T+1). The zip
is built while it is sent: rows come from two index-ordered cursors and leave compressed in
chunks, so a day of 100,000 trades never sits in memory.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import ApiError, business
from .runtime import Runtime
from .store import Store
from .trades import money

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MONTH_RE = re.compile(r"^\d{4}-\d{2}$")
CHUNK = 64 * 1024
ROWS_PER_WRITE = 500
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
SUMMARY_COLUMNS = [
    "门店编号",
    "门店名称",
    "交易订单总笔数",
    "退款订单总笔数",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "卡消费金额（元）",
    "服务费（元）",
    "分润（元）",
    "实收净额（元）",
]
# The markers exactly as Alipay's files carry them (the dash counts differ).
DETAIL_START = (
    "#-----------------------------------------业务明细列表----------------------------------------"
)
DETAIL_END = (
    "#-----------------------------------------业务明细列表结束------------------------------------"
)
SUMMARY_START = (
    "#-----------------------------------------业务汇总列表----------------------------------------"
)
SUMMARY_END = (
    "#----------------------------------------业务汇总列表结束-------------------------------------"
)
NEWLINE = "\r\n"


def _invalid(message: str) -> ApiError:
    return business("isv.invalid_arguments", message)


def bill_period(bill_date: str) -> tuple[date, date]:
    """``[start, end)`` of a ``yyyy-MM-dd`` day or ``yyyy-MM`` month; isv.invalid_arguments."""
    try:
        if DAY_RE.match(bill_date):
            day = datetime.strptime(bill_date, "%Y-%m-%d").date()
            return day, day + timedelta(days=1)
        if MONTH_RE.match(bill_date):
            first = datetime.strptime(bill_date, "%Y-%m").date()
            following = (first + timedelta(days=32)).replace(day=1)
            return first, following
    except ValueError:
        pass
    raise _invalid("账单日期格式不正确，日账单为 yyyy-MM-dd，月账单为 yyyy-MM")


class _Sink(io.RawIOBase):
    """An unseekable file the zip is written to; its bytes are taken out chunk by chunk."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.pending += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


class _GbkName(zipfile.ZipInfo):
    """An entry whose name is stored in GBK without the UTF-8 flag, as in Alipay's zips.

    zipfile stores non-ASCII names as UTF-8 and has no public way to write another encoding;
    readers open Alipay's bills with ``metadata_encoding="gbk"`` (Python) or a GBK charset.
    """

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 (zipfile's name)
        return self.filename.encode("gbk"), self.flag_bits


@dataclass
class _Totals:
    trades: int = 0
    refunds: int = 0
    received: Decimal = Decimal("0")
    refunded: Decimal = Decimal("0")


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y年%m月%d日 %H:%M:%S")


def _heading(title: str, account: str, start: date, end: date) -> str:
    return NEWLINE.join(
        [
            title,
            f"#账号：[{account}]",
            f"#起始日期：[{start:%Y年%m月%d日} 00:00:00]   终止日期：[{end:%Y年%m月%d日} 00:00:00]",
            "",
        ]
    )


def _row(kind: str, row: Any) -> list[str]:
    """One detail line; the trailing tabs are Alipay's (readers strip them)."""
    amount = row["amount"] if kind == "trade" else "-" + row["amount"]
    return [
        f"{row['trade_no'] or ''}\t",
        f"{row['out_trade_no']}\t",
        "交易\t" if kind == "trade" else "退款\t",
        row["subject"],
        row["gmt_create"],
        row["finished"],
        "\t",
        "\t",
        "\t",
        "\t",
        f"{row['buyer_logon_id']}\t",
        amount,
        amount,
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "",
        "0.00\t",
        "0.00",
        f"{row['out_request_no']}\t",
        "0.00",
        "0.00",
        "",
    ]


class Bills:
    def __init__(self, store: Store, seller_id: str, runtime: Runtime) -> None:
        self.store = store
        self.seller_id = seller_id
        self.runtime = runtime
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def account(self) -> str:
        return f"{self.seller_id}0156"

    def issue(self, biz: dict[str, Any], base_url: str, url_override: str = "") -> dict[str, Any]:
        """The signed answer's node; with ``url_override`` (the ``bill_url`` fault) every
        well-formed query, whatever its day, names that URL instead of a bill of the sandbox."""
        bill_type = str(biz.get("bill_type") or "")
        bill_date = str(biz.get("bill_date") or "")
        if bill_type != "trade":
            raise _invalid("账单类型不支持，仅支持 trade")
        start, end = bill_period(bill_date)
        if url_override:
            return {"code": "10000", "msg": "Success", "bill_download_url": url_override}
        today = self.runtime.cn_now().date()
        if end > (today if DAY_RE.match(bill_date) else today.replace(day=1)):
            raise _invalid("不支持下载当日或当月及以后的账单 (T+1)")
        if not self.store.has_activity(start.isoformat(), end.isoformat()):
            raise business("isp.bill_not_exist", "账单不存在")
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        ttl = self.runtime.snapshot().bill_url_ttl_s
        with self._lock:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (bill_date, now + ttl)
        return {
            "code": "10000",
            "msg": "Success",
            "bill_download_url": f"{base_url}/bills/{token}.zip",
        }

    def download(self, token: str) -> tuple[str, Iterator[bytes]] | None:
        """``(file name, zip bytes in chunks)`` for a token still valid, else None."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.monotonic():
            return None
        bill_date = entry[0]
        stem = f"{self.account}_{bill_date.replace('-', '')}"
        return f"{stem}.csv.zip", self._archive(stem, *bill_period(bill_date))

    def _archive(self, stem: str, start: date, end: date) -> Iterator[bytes]:
        exported = self.runtime.cn_now()
        sink = _Sink()
        totals = _Totals()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            detail = _GbkName(f"{stem}_业务明细.csv", exported.timetuple()[:6])
            detail.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(detail, "w") as out:
                for text in self._detail(start, end, totals, exported):
                    out.write(text.encode("gbk", "replace"))
                    if sink.pending >= CHUNK:
                        yield sink.take()
            summary = _GbkName(f"{stem}_业务明细(汇总).csv", exported.timetuple()[:6])
            summary.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(summary, "w") as out:
                out.write(self._summary(start, end, totals, exported).encode("gbk", "replace"))
        yield sink.take()

    def _detail(self, start: date, end: date, totals: _Totals, exported: datetime) -> Iterator[str]:
        yield _heading("#支付宝业务明细查询", self.account, start, end)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=NEWLINE)
        buffer.write(DETAIL_START + NEWLINE)
        writer.writerow(COLUMNS)
        pending = 0
        for kind, row in self.store.bill_rows(start.isoformat(), end.isoformat()):
            if kind == "trade":
                totals.trades += 1
                totals.received += Decimal(row["amount"])
            else:
                totals.refunds += 1
                totals.refunded += Decimal(row["amount"])
            writer.writerow(_row(kind, row))
            pending += 1
            if pending >= ROWS_PER_WRITE:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                pending = 0
        refunded = f"-{money(totals.refunded)}" if totals.refunds else "0.00"
        buffer.write(
            NEWLINE.join(
                [
                    DETAIL_END,
                    f"#交易合计：{totals.trades}笔，商家实收共{money(totals.received)}元，"
                    "商家优惠共0.00元",
                    f"#退款合计：{totals.refunds}笔，商家实收退款共{refunded}元，"
                    "商家优惠退款共0.00元",
                    f"#导出时间：[{_stamp(exported)}]",
                    "",
                ]
            )
        )
        yield buffer.getvalue()

    def _summary(self, start: date, end: date, totals: _Totals, exported: datetime) -> str:
        net = money(totals.received - totals.refunded)
        buffer = io.StringIO()
        buffer.write(_heading("#支付宝业务汇总查询", self.account, start, end))
        buffer.write(SUMMARY_START + NEWLINE)
        writer = csv.writer(buffer, lineterminator=NEWLINE)
        writer.writerow(SUMMARY_COLUMNS)
        zero = "0.00"
        writer.writerow(
            ["合计\t", "\t", totals.trades, totals.refunds, net, net, zero, zero, zero, zero, zero]
            + [net]
        )
        buffer.write(SUMMARY_END + NEWLINE)
        buffer.write(f"#导出时间：[{_stamp(exported)}]" + NEWLINE)
        return buffer.getvalue()
