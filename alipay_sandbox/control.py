"""The ``/_sandbox/`` control API (only with ``--control``): JSON in, JSON out."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .certmode import RenewError, describe_key_mode
from .errors import ApiError
from .faults import FaultError
from .gateway import Reply, decode_params
from .runtime import SettingsError
from .synthetic import SyntheticError, generate, plan_from
from .trades import return_url_for

if TYPE_CHECKING:
    from .app import Sandbox


def json_reply(status: int, payload: Any) -> Reply:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Reply(status, body, "application/json;charset=utf-8")


def _error(status: int, message: str, **extra: Any) -> Reply:
    return json_reply(status, {"error": message, **extra})


def _api_error(exc: ApiError) -> Reply:
    return json_reply(400, {"error": exc.sub_msg, **exc.node()})


def _notification(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "notify_id": row["notify_id"],
        "out_trade_no": row["out_trade_no"],
        "trade_status": row["trade_status"],
        "notify_url": row["url"],
        "state": row["state"],
        "deliveries": row["deliveries"],
        "next_at": row["next_at"],
        "created_at": row["created_at"],
        "attempts": json.loads(row["attempts"]),
        "params": json.loads(row["params"]),
    }


class Control:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def route(self, method: str, path: str, query: str, body: bytes) -> Reply:
        sub = path[len("/_sandbox/") :]
        try:
            payload = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, ValueError):
            return _error(400, "body is not JSON")
        if not isinstance(payload, dict):
            return _error(400, "body must be a JSON object")
        params = dict(parse_qsl(query))
        if sub == "reset" and method == "POST":
            return self.reset()
        if sub == "pay" and method == "POST":
            return self.pay(payload)
        if sub == "confirm" and method == "POST":
            return self.confirm(payload)
        if sub == "trades/generate" and method == "POST":
            return self.generate(payload)
        if sub.startswith("trades/") and method == "GET":
            return self.trade(unquote(sub[len("trades/") :]))
        if sub == "notifications" and method == "GET":
            return self.notifications(params.get("out_trade_no"))
        if sub == "certs" and method == "GET":
            return self.certs()
        if sub == "certs/renew" and method == "POST":
            return self.renew(payload)
        if sub == "notifications/flush" and method == "POST":
            return json_reply(200, {"flushed": self.sandbox.notifier.flush()})
        if sub == "faults":
            faults = self.sandbox.faults
            if method == "GET":
                return json_reply(200, faults.as_dict())
            if method == "DELETE":
                return json_reply(200, faults.clear())
            if method == "POST":
                try:
                    return json_reply(200, faults.update(payload))
                except FaultError as exc:
                    return _error(400, str(exc))
        if sub == "settings":
            runtime = self.sandbox.runtime
            if method == "GET":
                return json_reply(200, runtime.as_dict())
            if method == "DELETE":
                return json_reply(200, runtime.reset())
            if method == "POST":
                try:
                    return json_reply(200, runtime.update(payload))
                except SettingsError as exc:
                    return _error(400, str(exc))
        return _error(404, f"no control endpoint {method} {path}")

    def reset(self) -> Reply:
        # Renewed signing certificates stay: see Store.reset.
        self.sandbox.store.reset()
        self.sandbox.faults.clear()
        self.sandbox.runtime.reset()
        return json_reply(200, {"ok": True})

    def certs(self) -> Reply:
        cert_mode = self.sandbox.cert_mode
        described = cert_mode.describe() if cert_mode is not None else describe_key_mode()
        return json_reply(200, described)

    def renew(self, payload: dict[str, Any]) -> Reply:
        cert_mode = self.sandbox.cert_mode
        if cert_mode is None:
            return _error(409, "certificate mode is off (start with --cert-dir)")
        try:
            return json_reply(200, cert_mode.renew(payload))
        except RenewError as exc:
            return _error(400, str(exc))

    def generate(self, payload: dict[str, Any]) -> Reply:
        try:
            plan = plan_from(payload, self.sandbox.config.app_ids[0])
            return json_reply(200, generate(self.sandbox.store, plan))
        except SyntheticError as exc:
            return _error(400, str(exc))

    def _open(self, payload: dict[str, Any]) -> str | None:
        """The out_trade_no of the body, opening the cashier of its pay_url if given."""
        if payload.get("pay_url"):
            params = decode_params(urlsplit(str(payload["pay_url"])).query)
            trade = self.sandbox.gateway.open_page_pay(params, allow_paid=True)
            return str(trade["out_trade_no"])
        if payload.get("out_trade_no"):
            return str(payload["out_trade_no"])
        return None

    def pay(self, payload: dict[str, Any]) -> Reply:
        try:
            out_trade_no = self._open(payload)
            if out_trade_no is None:
                return _error(400, "give pay_url or out_trade_no")
            outcome = self.sandbox.trades.pay(out_trade_no)
        except ApiError as exc:
            return _api_error(exc)
        return json_reply(
            200,
            {
                "trade_no": outcome.trade["trade_no"],
                "out_trade_no": outcome.trade["out_trade_no"],
                "return_url": outcome.return_url,
                "return_dropped": self.sandbox.faults.snapshot().drop_return,
                "newly_paid": outcome.newly_paid,
            },
        )

    def confirm(self, payload: dict[str, Any]) -> Reply:
        """Like a buyer logging in at the cashier without paying (creates a wap trade)."""
        try:
            out_trade_no = self._open(payload)
            if out_trade_no is None:
                return _error(400, "give pay_url or out_trade_no")
            trade = self.sandbox.trades.confirm(out_trade_no)
        except ApiError as exc:
            return _api_error(exc)
        return json_reply(
            200,
            {
                "out_trade_no": trade["out_trade_no"],
                "method": trade["method"],
                "status": trade["status"],
                "confirmed": bool(trade["confirmed"]),
            },
        )

    def trade(self, out_trade_no: str) -> Reply:
        store = self.sandbox.store
        trade = store.get_trade(out_trade_no)
        if trade is None:
            return _error(404, f"no trade {out_trade_no}")
        result = {k: v for k, v in trade.items() if k != "return_params"}
        result["return_url_full"] = return_url_for(trade)
        result["refunds"] = store.refunds(out_trade_no)
        return json_reply(200, result)

    def notifications(self, out_trade_no: str | None) -> Reply:
        rows = self.sandbox.store.list_notifications(out_trade_no)
        return json_reply(200, [_notification(row) for row in rows])
