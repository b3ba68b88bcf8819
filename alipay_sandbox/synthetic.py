"""Synthetic paid trades (and some refunds) for one day, bulk-inserted into the store.

For bills of realistic size: ``POST /_sandbox/trades/generate`` on a running sandbox, or

    python -m alipay_sandbox.synthetic --store var/alipay_sandbox.sqlite3 \\
        --date 2024-05-01 --count 100000 --refunds 1000

Trade ``i`` (0-based) is ``<prefix><i zero-padded to width>``, paid at an even spread over the
day (Beijing time), for ``amounts[i % len(amounts)]``. Refunds go to every
``count // refunds``-th trade, for half its amount (``<out_trade_no>-R1``), a minute after
payment. Synthetic trades send no notifications and keep no refund window.
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .config import DEFAULT_APP_ID
from .errors import ApiError
from .store import Store
from .trades import money, parse_amount

MAX_COUNT = 1_000_000
DAY_S = 86400


class SyntheticError(ValueError):
    """Bad generation parameters; the message says which."""


@dataclass
class Plan:
    bill_date: str
    count: int
    refunds: int
    amounts: list[str]
    prefix: str
    width: int
    app_id: str

    @property
    def step(self) -> int:
        return self.count // self.refunds if self.refunds else 0

    def out_trade_no(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"

    def amount(self, index: int) -> str:
        return self.amounts[index % len(self.amounts)]

    def paid_second(self, index: int) -> int:
        return 1 + index * (DAY_S - 2) // self.count

    def refunded(self, index: int) -> bool:
        return bool(self.step) and index % self.step == 0 and index // self.step < self.refunds

    def refund_amount(self, index: int) -> str:
        return money(max(Decimal(self.amount(index)) / 2, Decimal("0.01")))


def plan_from(payload: dict[str, Any], app_id: str = DEFAULT_APP_ID) -> Plan:
    """Validate a generation request (control API body or CLI arguments)."""
    bill_date = str(payload.get("date") or "")
    try:
        datetime.strptime(bill_date, "%Y-%m-%d")
    except ValueError:
        raise SyntheticError("date must be yyyy-MM-dd") from None
    count = _integer(payload.get("count"), "count", 1, MAX_COUNT)
    refunds = _integer(payload.get("refunds", 0), "refunds", 0, count)
    raw_amounts = payload.get("amount", "10.00")
    amounts = raw_amounts if isinstance(raw_amounts, list) else [raw_amounts]
    if not amounts:
        raise SyntheticError("amount must not be an empty list")
    try:
        amounts = [money(parse_amount(value, "amount")) for value in amounts]
    except ApiError as exc:
        raise SyntheticError(f"bad amount: {exc.sub_msg}") from None
    prefix = str(payload.get("prefix") or f"synthetic-{bill_date.replace('-', '')}-")
    width = _integer(payload.get("width", 6), "width", 1, 20)
    if len(prefix) + max(width, len(str(count - 1))) > 64:
        raise SyntheticError("prefix too long: out_trade_no has at most 64 characters")
    return Plan(bill_date, count, refunds, amounts, prefix, width, app_id)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SyntheticError(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise SyntheticError(f"{name} must be an integer") from None
    if not low <= number <= high:
        raise SyntheticError(f"{name} must be between {low} and {high}")
    return number


def _clock(day: str, second: int) -> str:
    hours, rest = divmod(min(second, DAY_S - 1), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{day} {hours:02d}:{minutes:02d}:{seconds:02d}"


def _trade_rows(plan: Plan, batch: str) -> Iterator[tuple[Any, ...]]:
    day = plan.bill_date
    compact = day.replace("-", "")
    for index in range(plan.count):
        second = plan.paid_second(index)
        amount = plan.amount(index)
        refund_fee, gmt_refund, status, gmt_close = "0.00", "", "TRADE_SUCCESS", ""
        if plan.refunded(index):
            refund_fee = plan.refund_amount(index)
            gmt_refund = _clock(day, second + 60)
            if refund_fee == amount:
                status, gmt_close = "TRADE_CLOSED", gmt_refund
        yield (
            plan.out_trade_no(index),
            plan.app_id,
            "alipay.trade.page.pay",
            "Synthetic trade 测试商品",
            amount,
            status,
            f"{compact}22000{batch}{index:010d}",
            "",
            "",
            "RSA2",
            f"2088{index:012d}",
            "syn***@sandbox.com",
            refund_fee,
            _clock(day, second - 1),
            _clock(day, second),
            gmt_close,
            gmt_refund,
            "",
            "utf-8",
            "",
            None,
            None,
        )


def _refund_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    for index in range(0, plan.step * plan.refunds, plan.step or 1):
        if not plan.refunded(index):
            continue
        second = plan.paid_second(index)
        yield (
            plan.out_trade_no(index),
            f"{plan.out_trade_no(index)}-R1",
            plan.refund_amount(index),
            "synthetic refund",
            _clock(plan.bill_date, second + 60),
        )


def generate(store: Store, plan: Plan) -> dict[str, Any]:
    """Insert the plan's trades and refunds in one transaction; a summary of what was made."""
    started = time.monotonic()
    batch = f"{secrets.randbelow(10**5):05d}"
    try:
        store.insert_trades(_trade_rows(plan, batch), _refund_rows(plan))
    except sqlite3.IntegrityError:
        raise SyntheticError(
            "an out_trade_no of this plan exists already: use another prefix"
        ) from None
    total = sum((Decimal(plan.amount(i)) for i in range(plan.count)), Decimal("0"))
    refunded = sum(
        (Decimal(plan.refund_amount(i)) for i in range(plan.count) if plan.refunded(i)),
        Decimal("0"),
    )
    return {
        "date": plan.bill_date,
        "trades": plan.count,
        "refunds": plan.refunds,
        "first_out_trade_no": plan.out_trade_no(0),
        "last_out_trade_no": plan.out_trade_no(plan.count - 1),
        "total_amount": money(total),
        "refund_amount": money(refunded),
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alipay_sandbox.synthetic",
        description="Bulk-insert synthetic paid trades for one day into a sandbox store.",
    )
    parser.add_argument("--store", type=Path, default=Path("var/alipay_sandbox.sqlite3"))
    parser.add_argument("--date", required=True, help="yyyy-MM-dd (Beijing time)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--refunds", type=int, default=0)
    parser.add_argument("--amount", action="append", help="repeat to cycle amounts (10.00)")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--width", type=int, default=6)
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    args = parser.parse_args(argv)
    payload: dict[str, Any] = {
        "date": args.date,
        "count": args.count,
        "refunds": args.refunds,
        "amount": args.amount or ["10.00"],
        "prefix": args.prefix,
        "width": args.width,
    }
    try:
        plan = plan_from(payload, args.app_id)
        summary = generate(Store(args.store), plan)
    except SyntheticError as exc:
        parser.error(str(exc))
    print(
        f"{summary['trades']} trades and {summary['refunds']} refunds on {summary['date']}"
        f" in {summary['seconds']} s ({summary['first_out_trade_no']} ..."
        f" {summary['last_out_trade_no']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
