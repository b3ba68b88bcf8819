"""Command line flags and environment variables (a flag wins over its variable)."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_APP_ID = "2021000000000001"
DEFAULT_SELLER_ID = "2088000000000001"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8090
    store: Path = Path("var/alipay_sandbox.sqlite3")
    alipay_private_key: Path = Path("keys/alipay_private_key.pem")
    app_public_key: Path = Path("keys/app_public_key.pem")
    app_ids: list[str] = field(default_factory=lambda: [DEFAULT_APP_ID])
    seller_id: str = DEFAULT_SELLER_ID
    seller_email: str = "seller@sandbox.example"
    time_factor: float = 1.0
    control: bool = False
    public_url: str = ""
    log_level: str = "WARNING"
    refund_window_days: float = 365.0
    bill_url_ttl_s: float = 30.0
    empty_param_rate: float = 0.0
    # Certificate mode (公钥证书模式) when set: a directory written by `certs` (see certs.py).
    cert_dir: Path | None = None

    def base_url(self, bound_port: int | None = None) -> str:
        """The URL the sandbox advertises for its own links."""
        if self.public_url:
            return self.public_url.rstrip("/")
        port = bound_port if bound_port is not None else self.port
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    get = env.get
    cert_dir = get("ALIPAY_SANDBOX_CERT_DIR", "")
    parser = argparse.ArgumentParser(
        prog="python -m alipay_sandbox",
        description="Local Alipay gateway: page pay cashier, server APIs, notifications."
        " `python -m alipay_sandbox certs --help`: the files of certificate mode.",
    )
    parser.add_argument("--host", default=get("ALIPAY_SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(get("ALIPAY_SANDBOX_PORT", "8090")))
    parser.add_argument(
        "--store", type=Path, default=Path(get("ALIPAY_SANDBOX_STORE", Config.store))
    )
    parser.add_argument(
        "--alipay-private-key",
        type=Path,
        default=Path(get("ALIPAY_SANDBOX_PRIVATE_KEY", Config.alipay_private_key)),
        help="key the sandbox signs responses, returns and notifications with (in certificate"
        " mode: the key of the directory's alipayCertPublicKey_RSA2.crt)",
    )
    parser.add_argument(
        "--app-public-key",
        type=Path,
        default=Path(get("ALIPAY_SANDBOX_APP_PUBLIC_KEY", Config.app_public_key)),
        help="the merchant's app public key, to verify requests (key mode only)",
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=Path(cert_dir) if cert_dir else None,
        help="certificate mode: the directory `python -m alipay_sandbox certs` wrote"
        " (default: key mode)",
    )
    parser.add_argument(
        "--app-id",
        default=get("ALIPAY_SANDBOX_APP_IDS", DEFAULT_APP_ID),
        help="accepted app ids, comma-separated",
    )
    parser.add_argument("--seller-id", default=get("ALIPAY_SANDBOX_SELLER_ID", DEFAULT_SELLER_ID))
    parser.add_argument(
        "--time-factor",
        type=float,
        default=float(get("ALIPAY_SANDBOX_TIME_FACTOR", "1.0")),
        help="multiplies the notification retry schedule (0.001: 4 minutes -> 0.24 s)",
    )
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=_truthy(get("ALIPAY_SANDBOX_CONTROL")),
        help="enable the /_sandbox/ control API",
    )
    parser.add_argument(
        "--public-url",
        default=get("ALIPAY_SANDBOX_PUBLIC_URL", ""),
        help="base URL for the sandbox's own links (default http://host:port)",
    )
    parser.add_argument(
        "--refund-window-days",
        type=float,
        default=float(get("ALIPAY_SANDBOX_REFUND_WINDOW_DAYS", "365")),
        help="days a paid trade stays refundable before TRADE_FINISHED (times the time factor)",
    )
    parser.add_argument(
        "--bill-url-ttl",
        type=float,
        default=float(get("ALIPAY_SANDBOX_BILL_URL_TTL", "30")),
        help="seconds a bill download URL stays valid (times the time factor, at least 2 s)",
    )
    parser.add_argument(
        "--empty-param-rate",
        type=float,
        default=float(get("ALIPAY_SANDBOX_EMPTY_PARAM_RATE", "0")),
        help="probability (0..1) that a notification or return carries an empty parameter",
    )
    parser.add_argument(
        "--log-level",
        default=get("ALIPAY_SANDBOX_LOG_LEVEL", "WARNING"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if env is None else env
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    app_ids = [item.strip() for item in str(args.app_id).split(",") if item.strip()]
    if not app_ids:
        parser.error("--app-id needs at least one app id")
    if args.time_factor <= 0:
        parser.error("--time-factor must be positive")
    if not math.isfinite(args.refund_window_days) or args.refund_window_days <= 0:
        parser.error("--refund-window-days must be positive")
    if not math.isfinite(args.bill_url_ttl) or args.bill_url_ttl <= 0:
        parser.error("--bill-url-ttl must be positive")
    if not 0.0 <= args.empty_param_rate <= 1.0:
        parser.error("--empty-param-rate must be between 0 and 1")
    return Config(
        host=args.host,
        port=args.port,
        store=args.store,
        alipay_private_key=args.alipay_private_key,
        app_public_key=args.app_public_key,
        app_ids=app_ids,
        seller_id=args.seller_id,
        time_factor=args.time_factor,
        control=bool(args.control),
        public_url=args.public_url,
        log_level=args.log_level,
        refund_window_days=args.refund_window_days,
        bill_url_ttl_s=args.bill_url_ttl,
        empty_param_rate=args.empty_param_rate,
        cert_dir=args.cert_dir,
    )
