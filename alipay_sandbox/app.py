"""Wires the parts together and routes HTTP requests to them."""

from __future__ import annotations

import logging
import threading
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import rsa

from . import cashier
from .bills import Bills
from .certmode import CertMode, CertSetup
from .config import Config
from .control import Control, json_reply
from .errors import ApiError
from .faults import Faults
from .gateway import PAGE_METHODS, Gateway, Reply, decode_params
from .notifier import Notifier
from .runtime import Runtime, settings_from
from .signing import Signer, SigningKey
from .store import Store
from .trades import SWEEP_BATCH, TradeService

log = logging.getLogger("alipay_sandbox")
HTML = "text/html;charset=utf-8"
SWEEP_INTERVAL_S = 0.2


def html(status: int, text: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, text.encode("utf-8"), HTML, headers or {})


class Sandbox:
    def __init__(
        self,
        config: Config,
        alipay_key: rsa.RSAPrivateKey,
        app_public_key: rsa.RSAPublicKey,
        cert_setup: CertSetup | None = None,
    ) -> None:
        """Key mode, or certificate mode with ``cert_setup`` (its app certificate's key is
        then ``app_public_key``; ``alipay_key`` signs until a renewal replaces it)."""
        self.config = config
        self.store = Store(config.store)
        self.cert_mode = CertMode(cert_setup, self.store) if cert_setup is not None else None
        self.signer = self.cert_mode.signer if self.cert_mode else Signer(SigningKey(alipay_key))
        self.faults = Faults()
        self.runtime = Runtime(settings_from(config))
        self.notifier = Notifier(self.store, self.faults, config.time_factor)
        self.trades = TradeService(config, self.signer, self.store, self.notifier, self.runtime)
        self.bills = Bills(self.store, config.seller_id, self.runtime)
        self.gateway = Gateway(
            config,
            self.signer,
            app_public_key,
            self.faults,
            self.trades,
            self.bills,
            self.cert_mode,
        )
        self.control = Control(self) if config.control else None
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)

    def set_base_url(self, url: str) -> None:
        self.gateway.base_url = url.rstrip("/")

    def start(self) -> None:
        self.notifier.start()
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=5)
        self.notifier.stop()
        self.store.close()

    def _sweep_loop(self) -> None:
        """Close trades past their time_expire and finish those past their refund window,
        without waiting for anyone to ask about them."""
        while not self._stop.wait(SWEEP_INTERVAL_S):
            try:
                while self.trades.sweep() >= SWEEP_BATCH and not self._stop.is_set():
                    pass
            except Exception:  # keep sweeping whatever one bad row does
                log.exception("trade sweeper error")

    def route(self, method: str, path: str, query: str, body: bytes, content_type: str) -> Reply:
        if path == "/gateway.do" and method in ("GET", "POST"):
            form = body if method == "POST" and "x-www-form-urlencoded" in content_type else b""
            params = decode_params(query, form)
            if params.get("method") in PAGE_METHODS:
                return self.page_pay(params)
            return self.gateway.handle(params)
        if path.startswith("/cashier/"):
            return self.cashier(method, path[len("/cashier/") :])
        if path.startswith("/bills/") and path.endswith(".zip") and method == "GET":
            found = self.bills.download(path[len("/bills/") : -len(".zip")])
            if found is None:
                return html(404, cashier.not_found_page())
            name, chunks = found
            headers = {"Content-Disposition": f'attachment; filename="{name}"'}
            return Reply(200, b"", "application/zip", headers, stream=chunks)
        if path.startswith("/_sandbox/"):
            if self.control is None:
                return json_reply(404, {"error": "control API is off (start with --control)"})
            return self.control.route(method, path, query, body)
        if path in ("/", "/index.html") and method == "GET":
            return html(200, cashier.index_page(self.control is not None))
        return html(404, cashier.not_found_page())

    def page_pay(self, params: dict[str, str]) -> Reply:
        try:
            trade = self.gateway.open_page_pay(params, allow_paid=True)
        except ApiError as exc:
            return html(400, cashier.error_page(exc))
        if trade["gmt_payment"]:
            # A reopened link (or Back after paying): Alipay refuses it; say so with a way out.
            return html(400, cashier.already_paid_page(trade))
        return html(200, cashier.cashier_page(trade))

    def cashier(self, method: str, rest: str) -> Reply:
        parts = rest.split("/")
        out_trade_no = unquote(parts[0])
        action = parts[1] if len(parts) > 1 else ""
        trade = self.trades.refresh(out_trade_no) if len(parts) <= 2 else None
        if trade is None:
            return html(404, cashier.not_found_page())
        if method == "GET" and action == "":
            if trade["gmt_payment"]:
                return html(200, cashier.paid_page(trade))
            if trade["status"] == "TRADE_CLOSED":
                error = self.trades.closed_error(trade)
                return html(400, cashier.error_page(error))
            return html(200, cashier.cashier_page(trade))
        if method == "POST" and action == "pay":
            try:
                outcome = self.trades.pay(out_trade_no)
            except ApiError as exc:
                return html(400, cashier.error_page(exc))
            if self.faults.snapshot().drop_return or not outcome.return_url:
                return html(200, cashier.paid_page(outcome.trade))
            return html(302, "", {"Location": outcome.return_url})
        if method == "POST" and action == "confirm":
            try:
                trade = self.trades.confirm(out_trade_no)
            except ApiError as exc:
                return html(400, cashier.error_page(exc))
            if trade["gmt_payment"]:
                return html(200, cashier.paid_page(trade))
            return html(200, cashier.cashier_page(trade))
        if method == "POST" and action == "cancel":
            return html(200, cashier.cancelled_page(trade))
        return html(405, cashier.not_found_page())
