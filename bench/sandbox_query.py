"""Throughput and latency of ``alipay.trade.query`` against the local Alipay sandbox.

Starts a sandbox process (throwaway keys, temporary store), creates and pays N trades
through the control API, then calls ``alipay.trade.query`` through python-alipay-sdk from C
concurrent threads for a fixed time per concurrency level, and prints requests per second
and p50/p99 latency for each level.

Reproduce from the repository root:

    .venv/bin/python bench/sandbox_query.py
    .venv/bin/python bench/sandbox_query.py --concurrency 1,4,16,64 --duration 5 --trades 200
    .venv/bin/python bench/sandbox_query.py --latency-ms 100   # with injected gateway latency

The client side (SDK signing with pycryptodomex, one Python process, the GIL) is part of
what is measured: on a small machine it costs about as much CPU as the sandbox itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alipay import AliPay  # noqa: E402
from alipay.utils import AliPayConfig  # noqa: E402

from alipay_sandbox.config import DEFAULT_APP_ID  # noqa: E402
from alipay_sandbox.testing import SandboxProcess, clear_proxy_env, start_sandbox  # noqa: E402
from payment.gateway.keys import write_keys  # noqa: E402


def make_client(keys: Path, gateway: str) -> AliPay:
    client = AliPay(
        DEFAULT_APP_ID,
        app_private_key_string=(keys / "app_private_key.pem").read_text(),
        alipay_public_key_string=(keys / "alipay_public_key.pem").read_text(),
        config=AliPayConfig(timeout=30),
    )
    client._gateway = gateway
    return client


def create_trades(sandbox: SandboxProcess, keys: Path, count: int) -> list[str]:
    client = make_client(keys, sandbox.gateway)
    numbers = []
    for index in range(count):
        out_trade_no = f"bench-{index:06d}"
        query = client.api_alipay_trade_page_pay("Bench item", out_trade_no, "10.00")
        sandbox.control.pay(sandbox.gateway + "?" + query)
        numbers.append(out_trade_no)
    return numbers


def run_level(
    keys: Path, gateway: str, trades: list[str], concurrency: int, duration: float
) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = [0.0]
    began_at = [0.0]

    def go() -> None:  # runs once, when every thread has its client ready
        began_at[0] = time.perf_counter()
        stop_at[0] = began_at[0] + duration

    start_barrier = threading.Barrier(concurrency + 1, action=go)

    def worker(index: int) -> None:
        client = make_client(keys, gateway)
        rng = random.Random(index)
        start_barrier.wait()
        mine = latencies[index]
        while time.perf_counter() < stop_at[0]:
            out_trade_no = rng.choice(trades)
            began = time.perf_counter()
            try:
                result = client.api_alipay_trade_query(out_trade_no=out_trade_no)
                ok = result.get("trade_status") == "TRADE_SUCCESS"
            except Exception:
                ok = False
            mine.append(time.perf_counter() - began)
            if not ok:
                errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began_at[0]
    samples = sorted(value for chunk in latencies for value in chunk)
    count = len(samples)
    return {
        "concurrency": concurrency,
        "requests": count,
        "errors": sum(errors),
        "rps": count / elapsed if elapsed else 0.0,
        "p50_ms": statistics.median(samples) * 1000 if samples else 0.0,
        "p99_ms": samples[min(count - 1, int(count * 0.99))] * 1000 if samples else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=200, help="paid trades to query (N)")
    parser.add_argument(
        "--concurrency", default="1,4,16,64", help="comma-separated thread counts (C)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="latency injected into every query"
    )
    args = parser.parse_args()
    levels = [int(item) for item in args.concurrency.split(",") if item.strip()]
    clear_proxy_env()

    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        keys = Path(tmp) / "keys"
        write_keys(keys, sandbox=True)
        sandbox = start_sandbox(keys, Path(tmp) / "store.sqlite3", time_factor=1.0)
        try:
            began = time.perf_counter()
            trades = create_trades(sandbox, keys, args.trades)
            setup_s = time.perf_counter() - began
            if args.latency_ms:
                sandbox.control.set_faults(latency_ms=args.latency_ms)
            print(
                f"machine: nproc={os.cpu_count()} {platform.machine()} "
                f"python {platform.python_version()} {platform.system()} "
                f"loadavg(1m)={os.getloadavg()[0]:.2f} at start"
            )
            print(
                f"command: .venv/bin/python bench/sandbox_query.py --trades {args.trades} "
                f"--concurrency {args.concurrency} --duration {args.duration:g} "
                f"--latency-ms {args.latency_ms}"
            )
            print(
                f"setup: {len(trades)} trades created and paid via control API in "
                f"{setup_s:.2f} s ({len(trades) / setup_s:.0f}/s)"
            )
            print(
                f"{'threads':>7} {'requests':>9} {'errors':>6} {'req/s':>8} "
                f"{'p50 ms':>8} {'p99 ms':>8}"
            )
            for level in levels:
                row = run_level(keys, sandbox.gateway, trades, level, args.duration)
                print(
                    f"{row['concurrency']:>7} {row['requests']:>9} {row['errors']:>6} "
                    f"{row['rps']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}",
                    flush=True,
                )
        finally:
            sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
