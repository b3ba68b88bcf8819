"""Benchmark: peak memory of parsing a trade bill, crafted or valid.

Reproduce:  .venv/bin/python bench/bill_parse.py [--trades 100000]

Writes three zips to a temporary folder: a detail CSV whose one data line fills an 816 KB
zip (about 840 MB of text) and a 204 KB one (about 210 MB), and a valid bill of `--trades`
trades and a refund per hundred in Alipay's format. Each is parsed by `bills.bill_rows` in a
fresh child process (no database: parsing only), which reports its outcome, its time and its
peak RSS (VmHWM) above its RSS once Django is loaded; the 816 KB one twice, the second time
with BILL_MAX_UNCOMPRESSED_BYTES lifted to 2 GiB, so that only the line cap stands. Memory must
not follow the line's length or the bill's size.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alipay_sandbox.bills import COLUMNS, DETAIL_END, DETAIL_START, NEWLINE  # noqa: E402
from bench.bills import rss_mib  # noqa: E402
from bench.stack import machine  # noqa: E402

NAME = "20880000000000010156_20260110_业务明细.csv"
HEADING = NEWLINE.join(["#支付宝业务明细查询", "#账号：[20880000000000010156]",
                        DETAIL_START, ",".join(COLUMNS), ""])


def long_line(path: Path, chars: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(NAME, "w") as out:
            out.write(HEADING.encode("gbk"))
            block = b"9" * (1 << 20)
            for _ in range(chars >> 20):
                out.write(block)


def valid(path: Path, trades: int) -> None:
    def line(n: int, refund: bool) -> str:
        amount = "-4.95" if refund else "9.90"
        cells = dict.fromkeys(COLUMNS, "0.00")
        cells.update({"支付宝交易号": f"2026011022001{n:015d}\t", "商户订单号": f"b{n:07d}\t",
                      "业务类型": "退款\t" if refund else "交易\t", "商品名称": "Shop order",
                      "完成时间": "2026-01-10 12:00:00", "订单金额（元）": amount,
                      "退款批次号/请求号": f"b{n:07d}-R1\t" if refund else "\t"})
        return ",".join(cells[c] for c in COLUMNS) + NEWLINE

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(NAME, "w") as out:
            out.write(HEADING.encode("gbk"))
            for n in range(trades):
                out.write(line(n, False).encode("gbk"))
                if n % 100 == 0:
                    out.write(line(n, True).encode("gbk"))
            out.write((DETAIL_END + NEWLINE).encode("gbk"))


def child(path: str) -> None:
    """Parse one bill in a fresh process; print its figures as JSON."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from payment.reconciliation import bills

    base = rss_mib()
    started = time.perf_counter()
    lines = 0
    try:
        with open(path, "rb") as stream:
            for _ in bills.bill_rows(stream):
                lines += 1
        outcome = f"{lines} lines"
    except bills.BillUnreadable as exc:
        outcome = f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 (what escapes is the figure)
        outcome = f"raised {type(exc).__name__}: {str(exc)[:60]}"
    print(json.dumps({"seconds": time.perf_counter() - started, "outcome": outcome,
                      "grown_mib": rss_mib("VmHWM") - base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/bill_parse.py --trades {args.trades}")
    with tempfile.TemporaryDirectory() as folder:
        long816 = Path(folder, "long816.zip")
        lifted = {"BILL_MAX_UNCOMPRESSED_BYTES": str(2 << 30)}
        cases = [
            ("one long line, 816 KB zip", long816, 840 << 20, long_line, {}),
            ("  same, unpacked cap lifted", long816, 0, None, lifted),
            ("one long line, 204 KB zip", Path(folder, "long204.zip"), 210 << 20, long_line, {}),
            (f"valid, {args.trades} trades", Path(folder, "valid.zip"), args.trades, valid, {}),
        ]
        print(f"{'bill':<28} {'zip KiB':>8} {'seconds':>8} {'peak RSS +MiB':>14}  outcome")
        for label, path, size, make, env in cases:
            if make is not None:
                make(path, size)
            process = subprocess.run([sys.executable, __file__, "--child", str(path)],
                                     env={**os.environ, **env},
                                     capture_output=True, text=True, check=True)
            figures = json.loads(process.stdout.strip().splitlines()[-1])
            print(f"{label:<28} {path.stat().st_size / 1024:>8.0f} {figures['seconds']:>8.1f} "
                  f"{figures['grown_mib']:>14.1f}  {figures['outcome'][:90]}")


if __name__ == "__main__":
    main()
