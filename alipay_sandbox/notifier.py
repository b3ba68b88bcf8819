"""Asynchronous notification delivery with Alipay's retry schedule.

Notifications live in the store, so a restarted sandbox picks up where it stopped. A
dispatcher thread hands due notifications to a small pool of delivery threads.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from .faults import Faults
from .signing import codec_for
from .store import Store

log = logging.getLogger("alipay_sandbox.notifier")

# Waits after the 1st..7th failed delivery, in seconds (before the time factor).
RETRY_SCHEDULE_S = (240, 600, 600, 3600, 7200, 21600, 54000)
MAX_DELIVERIES = len(RETRY_SCHEDULE_S) + 1
REORDER_SPACING_S = 0.05


def new_notify_id(moment: datetime) -> str:
    """34 digits like Alipay's: ``yyyyMMdd`` + ``00222`` + ``HHmmss`` + 15 random digits."""
    return (
        moment.strftime("%Y%m%d")
        + "00222"
        + moment.strftime("%H%M%S")
        + (f"{secrets.randbelow(10**15):015d}")
    )


class Notifier:
    def __init__(
        self,
        store: Store,
        faults: Faults,
        time_factor: float = 1.0,
        workers: int = 8,
        http_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.faults = faults
        self.time_factor = time_factor
        self.workers = workers
        self.http_timeout = http_timeout
        self._event = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[int] = set()
        self._inflight_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify")
        self._thread = threading.Thread(target=self._loop, name="notify-dispatch", daemon=True)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._event.set()

    # -- enqueue (inside the caller's write transaction) ----------------------------------
    def enqueue(
        self,
        conn: sqlite3.Connection,
        *,
        out_trade_no: str,
        trade_status: str,
        url: str,
        params: dict[str, str],
    ) -> None:
        faults = self.faults.snapshot()
        now = time.time()
        if faults.notify_drop:
            state, next_at = "dropped", None
        elif faults.notify_reorder:
            state, next_at = "held", None
        else:
            state, next_at = "pending", now + faults.notify_delay_s
        self.store.insert_notification(
            conn,
            {
                "notify_id": params["notify_id"],
                "out_trade_no": out_trade_no,
                "trade_status": trade_status,
                "url": url,
                "params": json.dumps(params, ensure_ascii=False),
                "state": state,
                "next_at": next_at,
                "created_at": now,
            },
        )

    def flush(self) -> int:
        count = self.store.flush_notifications(time.time())
        self.wake()
        return count

    # -- dispatch -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._tick()
            except Exception:  # keep delivering whatever one bad row does
                log.exception("notification dispatcher error")
                wait = 0.5
            self._event.wait(wait)
            self._event.clear()

    def _tick(self) -> float:
        now = time.time()
        self._release_held(now)
        with self._inflight_lock:
            busy = set(self._inflight)
        room = self.workers * 4 - len(busy)
        if room > 0:
            for note in self.store.due_notifications(now, busy, limit=room):
                with self._inflight_lock:
                    self._inflight.add(note["id"])
                self._pool.submit(self._deliver, note)
        next_at = self.store.next_due_at()
        if next_at is None:
            return 0.25
        return min(max(next_at - time.time(), 0.02), 0.25)

    def _release_held(self, now: float) -> None:
        held = self.store.held_notifications()
        if not held:
            return
        window = self.faults.snapshot().notify_reorder_window_s
        if held[0]["created_at"] + window > now:
            return
        ordered = list(reversed(held))
        times = [now + i * REORDER_SPACING_S for i in range(len(ordered))]
        self.store.schedule([note["id"] for note in ordered], times)

    def _deliver(self, note: dict[str, Any]) -> None:
        try:
            faults = self.faults.snapshot()
            params = json.loads(note["params"])
            # Sent in the charset of the merchant's request (the ``charset`` parameter).
            charset = params.get("charset", "utf-8")
            codec = codec_for(charset) or "utf-8"
            body = urllib.parse.urlencode(params, encoding=codec).encode("ascii")
            extra = max(0, faults.notify_duplicate)
            results: list[tuple[bool, dict[str, Any]]] = [None] * (extra + 1)  # type: ignore[list-item]

            def send(index: int) -> None:
                results[index] = self._post(note["url"], body, charset)

            threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(extra)]
            for thread in threads:
                thread.start()
            send(extra)
            for thread in threads:
                thread.join()
            delivered = any(ok for ok, _ in results)
            deliveries = note["deliveries"] + 1
            if delivered:
                state, next_at = "delivered", None
            elif deliveries >= MAX_DELIVERIES:
                state, next_at = "given_up", None
            else:
                delay = RETRY_SCHEDULE_S[deliveries - 1] * self.time_factor
                state, next_at = "pending", time.time() + delay
            self.store.finish_delivery(note["id"], [a for _, a in results], state, next_at)
        except Exception:
            log.exception("notification delivery failed")
        finally:
            with self._inflight_lock:
                self._inflight.discard(note["id"])
            self.wake()

    def _post(self, url: str, body: bytes, charset: str) -> tuple[bool, dict[str, Any]]:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": f"application/x-www-form-urlencoded; charset={charset}",
                "User-Agent": "Mozilla/4.0 (alipay-sandbox notify)",
            },
        )
        started = time.time()
        status: int | None
        try:
            with self._opener.open(request, timeout=self.http_timeout) as response:
                status = response.status
                text = response.read(4096)
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                text = exc.read(4096)
            except OSError:
                text = b""
        except (OSError, ValueError) as exc:
            log.debug("notify %s failed: %s", url, type(exc).__name__)
            return False, {"at": started, "http_status": None, "body": str(exc)[:100]}
        decoded = text.decode("utf-8", "replace")
        ok = status == 200 and decoded.strip() == "success"
        log.debug("notify %s -> %s", url, status)
        return ok, {"at": started, "http_status": status, "body": decoded[:100]}
