"""Small stdlib client for the sandbox control API, for tests of other parts.

control = SandboxControl("http://127.0.0.1:8090")
control.reset()
result = control.pay(pay_url)          # {"trade_no", "out_trade_no", "return_url", ...}
control.set_faults(notify_drop=True)
control.set_settings(refund_window_s=1, empty_param_rate=0.5)
control.generate_trades("2024-05-01", 100000, refunds=1000)
control.renew_cert()                   # certificate mode: {"alipay_cert_sn", "previous"}
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class SandboxError(Exception):
    """The control API answered with an error status."""

    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(f"sandbox control API answered {status}: {payload}")
        self.status = status
        self.payload = payload


class SandboxControl:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def gateway(self) -> str:
        """The gateway URL to give the SDK (``client._gateway``)."""
        return self.base_url + "/gateway.do"

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode("utf-8", "replace")
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw
            raise SandboxError(exc.code, payload) from None

    def reset(self) -> None:
        """Forget all trades, refunds, notifications and faults."""
        self._call("POST", "/_sandbox/reset", {})

    def pay(self, pay_url: str | None = None, *, out_trade_no: str | None = None) -> dict:
        """Pay like a buyer pressing Pay; give the full signed page- or wap-pay URL or an
        out_trade_no."""
        body: dict[str, str | None] = (
            {"pay_url": pay_url} if pay_url else {"out_trade_no": out_trade_no}
        )
        return self._call("POST", "/_sandbox/pay", body)

    def confirm(self, pay_url: str | None = None, *, out_trade_no: str | None = None) -> dict:
        """Log in at the cashier without paying: a wap trade then exists for query and close."""
        body: dict[str, str | None] = (
            {"pay_url": pay_url} if pay_url else {"out_trade_no": out_trade_no}
        )
        return self._call("POST", "/_sandbox/confirm", body)

    def set_faults(self, **faults: Any) -> dict:
        return self._call("POST", "/_sandbox/faults", faults)

    def faults(self) -> dict:
        return self._call("GET", "/_sandbox/faults")

    def clear_faults(self) -> dict:
        return self._call("DELETE", "/_sandbox/faults")

    def settings(self) -> dict:
        return self._call("GET", "/_sandbox/settings")

    def set_settings(self, **settings: Any) -> dict:
        """refund_window_s, bill_url_ttl_s, empty_param_rate, clock_offset_s (real seconds)."""
        return self._call("POST", "/_sandbox/settings", settings)

    def clear_settings(self) -> dict:
        """Back to the start-up settings."""
        return self._call("DELETE", "/_sandbox/settings")

    def certs(self) -> dict:
        """``{"mode": "cert" | "key", "current", "issued": [...], "app_cert_sn",
        "root_cert_sn"}``: the signing certificates of certificate mode."""
        return self._call("GET", "/_sandbox/certs")

    def renew_cert(self, *, untrusted: bool = False) -> dict:
        """A new signing key and certificate, used from now on: ``{"alipay_cert_sn",
        "previous"}``. ``untrusted``: issued by a CA that is not in the root bundle."""
        body = {"untrusted": True} if untrusted else {}
        return self._call("POST", "/_sandbox/certs/renew", body)

    def generate_trades(
        self,
        date: str,
        count: int,
        *,
        refunds: int = 0,
        amount: str | list[str] | None = None,
        prefix: str | None = None,
        width: int | None = None,
    ) -> dict:
        """Bulk-insert ``count`` paid trades (and ``refunds`` partial refunds) on ``date``."""
        body: dict[str, Any] = {"date": date, "count": count, "refunds": refunds}
        optional = {"amount": amount, "prefix": prefix, "width": width}
        body.update({name: value for name, value in optional.items() if value is not None})
        return self._call("POST", "/_sandbox/trades/generate", body, timeout=max(self.timeout, 120))

    def trade(self, out_trade_no: str) -> dict:
        quoted = urllib.parse.quote(out_trade_no, safe="")
        return self._call("GET", f"/_sandbox/trades/{quoted}")

    def notifications(self, out_trade_no: str | None = None) -> list[dict]:
        query = "?" + urllib.parse.urlencode({"out_trade_no": out_trade_no}) if out_trade_no else ""
        return self._call("GET", "/_sandbox/notifications" + query)

    def flush_notifications(self) -> int:
        return int(self._call("POST", "/_sandbox/notifications/flush", {})["flushed"])

    def wait_notifications(
        self,
        out_trade_no: str | None = None,
        predicate: Any = None,
        timeout: float = 10.0,
        interval: float = 0.05,
    ) -> list[dict]:
        """Poll until ``predicate(notifications)`` is true (default: none pending)."""

        def settled(notes: list[dict]) -> bool:
            return bool(notes) and all(n["state"] not in ("pending", "held") for n in notes)

        check = predicate or settled
        deadline = time.monotonic() + timeout
        notes = self.notifications(out_trade_no)
        while not check(notes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"notifications did not settle: {notes!r}"[:2000])
            time.sleep(interval)
            notes = self.notifications(out_trade_no)
        return notes

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the sandbox answers HTTP."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._opener.open(self.base_url + "/", timeout=1) as response:
                    response.read()
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
