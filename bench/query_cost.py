"""CPU of one `alipay.trade.query` on the caller's side, and how much of it is the RSA signature.

Every first delivery and every reconciliation check makes one trade query, in this project and
in the careful seed alike; this prints what that costs the caller on this machine, so that
`compare.py`'s CPU per request can be read against it:
- the project's client (`payment.gateway.trade_query`, one thread, kept connection) against
  the sandbox: CPU per query, the RSA-2048 signature alone (`cryptography`), and the rest;
- the RSA-2048 signature and verification with pycryptodomex, which python-alipay-sdk (and so
  the careful seed) uses: a return verified, a query signed, its answer verified.

Medians over --rounds rounds of --queries queries. Reproduce from the repository root:

    .venv/bin/python bench/query_cost.py [--queries 1000] [--rounds 7]
"""
import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack, machine  # noqa: E402


def per_call_ms(call: Callable[[int], object], count: int, rounds: int) -> float:
    """Median over rounds of the process CPU per call, in ms."""
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for n in range(count):
            call(n)
        times.append((time.process_time() - started) / count * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(machine(), flush=True)
    with Stack("bench_query_cost") as stack:
        stack.prepare()
        stack.start_sandbox()
        from Cryptodome.Hash import SHA256
        from Cryptodome.PublicKey import RSA
        from Cryptodome.Signature import PKCS1_v1_5
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from payment import gateway

        key = gateway.client._app_private_key()
        message = b"app_id=2021000000000000&biz_content=" + b"x" * 300
        gateway.trade_query(out_trade_no="Q0")  # connect, load the keys

        def query(n: int) -> None:
            gateway.trade_query(out_trade_no=f"Q{n:08d}")

        def sign(n: int) -> None:
            key.sign(message + str(n).encode(), padding.PKCS1v15(), hashes.SHA256())

        per_query = per_call_ms(query, args.queries, args.rounds)
        per_sign = per_call_ms(sign, args.queries, args.rounds)
        slow_key = RSA.import_key((stack.keys / "app_private_key.pem").read_text())
        slow_signer = PKCS1_v1_5.new(slow_key)
        digest = SHA256.new(message)
        signature = slow_signer.sign(digest)
        slow_verifier = PKCS1_v1_5.new(slow_key.public_key())
        few = max(50, args.queries // 10)
        slow_sign = per_call_ms(lambda n: slow_signer.sign(SHA256.new(message + bytes([n % 256]))),
                                few, args.rounds)
        slow_verify = per_call_ms(lambda n: slow_verifier.verify(digest, signature),
                                  few, args.rounds)
    print(f"project's trade query, caller's CPU: {per_query:.3f} ms per query "
          f"(RSA-2048 signature with cryptography {per_sign:.3f} ms, the rest "
          f"{per_query - per_sign:.3f} ms)")
    print(f"pycryptodomex (python-alipay-sdk, the careful seed): signature {slow_sign:.3f} ms, "
          f"verification {slow_verify:.3f} ms; a careful first delivery verifies twice and "
          f"signs once: {slow_sign + 2 * slow_verify:.3f} ms")
    print(f"reproduce: .venv/bin/python bench/query_cost.py --queries {args.queries} "
          f"--rounds {args.rounds}")


if __name__ == "__main__":
    main()
