"""SQLite store for trades, refunds, pending notifications and renewed signing certificates.

One file in WAL mode. Reads use pooled connections concurrently; writes are serialised by a
lock and run in ``BEGIN IMMEDIATE`` transactions.
"""

from __future__ import annotations

import heapq
import json
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    out_trade_no TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    method TEXT NOT NULL,
    subject TEXT NOT NULL,
    total_amount TEXT NOT NULL,
    status TEXT NOT NULL,
    trade_no TEXT UNIQUE,
    return_url TEXT NOT NULL DEFAULT '',
    notify_url TEXT NOT NULL DEFAULT '',
    sign_type TEXT NOT NULL DEFAULT 'RSA2',
    buyer_id TEXT NOT NULL DEFAULT '',
    buyer_logon_id TEXT NOT NULL DEFAULT '',
    refund_fee TEXT NOT NULL DEFAULT '0.00',
    gmt_create TEXT NOT NULL,
    gmt_payment TEXT NOT NULL DEFAULT '',
    gmt_close TEXT NOT NULL DEFAULT '',
    gmt_refund TEXT NOT NULL DEFAULT '',
    return_params TEXT NOT NULL DEFAULT '',
    charset TEXT NOT NULL DEFAULT 'utf-8',
    time_expire TEXT NOT NULL DEFAULT '',
    expire_at REAL,
    finish_at REAL,
    quit_url TEXT NOT NULL DEFAULT '',
    confirmed INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS refunds (
    out_trade_no TEXT NOT NULL,
    out_request_no TEXT NOT NULL,
    refund_amount TEXT NOT NULL,
    refund_reason TEXT NOT NULL DEFAULT '',
    gmt_refund TEXT NOT NULL,
    PRIMARY KEY (out_trade_no, out_request_no)
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notify_id TEXT NOT NULL UNIQUE,
    out_trade_no TEXT NOT NULL,
    trade_status TEXT NOT NULL,
    url TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    created_at REAL NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]'
);
-- Signing certificates issued by renewal (certificate mode), kept across restarts and resets.
-- setup: the SN of the intermediate CA of the certificate directory they were renewed under.
CREATE TABLE IF NOT EXISTS signing_certs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    setup TEXT NOT NULL,
    sn TEXT NOT NULL UNIQUE,
    chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""
# After the columns added since the first release exist (see Store._migrate).
INDEXES = """
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_at);
CREATE INDEX IF NOT EXISTS notifications_trade ON notifications (out_trade_no);
CREATE INDEX IF NOT EXISTS trades_payment ON trades (gmt_payment);
CREATE INDEX IF NOT EXISTS refunds_time ON refunds (gmt_refund);
CREATE INDEX IF NOT EXISTS trades_expiring ON trades (expire_at) WHERE status = 'WAIT_BUYER_PAY';
CREATE INDEX IF NOT EXISTS trades_finishing ON trades (finish_at) WHERE status = 'TRADE_SUCCESS';
"""
ADDED_TRADE_COLUMNS = {
    "charset": "TEXT NOT NULL DEFAULT 'utf-8'",
    "time_expire": "TEXT NOT NULL DEFAULT ''",
    "expire_at": "REAL",
    "finish_at": "REAL",
    "quit_url": "TEXT NOT NULL DEFAULT ''",
    # 0: a wap trade the buyer has not confirmed yet, which Alipay does not know of.
    "confirmed": "INTEGER NOT NULL DEFAULT 1",
}
TRADE_COLUMNS = (
    "out_trade_no, app_id, method, subject, total_amount, status, trade_no, return_url,"
    " notify_url, sign_type, buyer_id, buyer_logon_id, refund_fee, gmt_create, gmt_payment,"
    " gmt_close, gmt_refund, return_params, charset, time_expire, expire_at, finish_at"
)
BILL_BATCH = 2000


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


def _batches(cursor: sqlite3.Cursor) -> Iterator[sqlite3.Row]:
    while True:
        rows = cursor.fetchmany(BILL_BATCH)
        if not rows:
            return
        yield from rows


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._write_lock = threading.Lock()
        with self.connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            self._migrate(conn)
            conn.executescript(INDEXES)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Add the trade columns a store written by an older sandbox lacks."""
        present = {row[1] for row in conn.execute("PRAGMA table_info(trades)")}
        for name, kind in ADDED_TRADE_COLUMNS.items():
            if name not in present:
                conn.execute(f"ALTER TABLE trades ADD COLUMN {name} {kind}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection in autocommit mode, for reads."""
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A serialised write transaction: commits on success, rolls back on error."""
        with self._write_lock, self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return

    # -- trades ---------------------------------------------------------------------------
    def get_trade(
        self,
        out_trade_no: str | None = None,
        trade_no: str | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> dict[str, Any] | None:
        if out_trade_no:
            sql, arg = "SELECT * FROM trades WHERE out_trade_no = ?", out_trade_no
        elif trade_no:
            sql, arg = "SELECT * FROM trades WHERE trade_no = ?", trade_no
        else:
            return None
        if conn is not None:
            row = _row(conn.execute(sql, (arg,)).fetchone())
        else:
            with self.connection() as own:
                row = _row(own.execute(sql, (arg,)).fetchone())
        if row is not None and out_trade_no and trade_no and row["trade_no"] != trade_no:
            return None
        return row

    @staticmethod
    def insert_trade(conn: sqlite3.Connection, trade: dict[str, Any]) -> None:
        columns = ", ".join(trade)
        marks = ", ".join("?" for _ in trade)
        conn.execute(f"INSERT INTO trades ({columns}) VALUES ({marks})", tuple(trade.values()))

    @staticmethod
    def delete_trade(conn: sqlite3.Connection, out_trade_no: str) -> None:
        conn.execute("DELETE FROM trades WHERE out_trade_no = ?", (out_trade_no,))

    @staticmethod
    def update_trade(conn: sqlite3.Connection, out_trade_no: str, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        conn.execute(
            f"UPDATE trades SET {assignments} WHERE out_trade_no = ?",
            (*fields.values(), out_trade_no),
        )

    def refunds(
        self, out_trade_no: str, conn: sqlite3.Connection | None = None
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM refunds WHERE out_trade_no = ? ORDER BY gmt_refund, rowid"
        if conn is not None:
            return [dict(r) for r in conn.execute(sql, (out_trade_no,))]
        with self.connection() as own:
            return [dict(r) for r in own.execute(sql, (out_trade_no,))]

    def get_refund(
        self, out_trade_no: str, out_request_no: str, conn: sqlite3.Connection | None = None
    ) -> dict[str, Any] | None:
        sql = "SELECT * FROM refunds WHERE out_trade_no = ? AND out_request_no = ?"
        if conn is not None:
            return _row(conn.execute(sql, (out_trade_no, out_request_no)).fetchone())
        with self.connection() as own:
            return _row(own.execute(sql, (out_trade_no, out_request_no)).fetchone())

    @staticmethod
    def insert_refund(conn: sqlite3.Connection, refund: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO refunds (out_trade_no, out_request_no, refund_amount, refund_reason,"
            " gmt_refund) VALUES (:out_trade_no, :out_request_no, :refund_amount,"
            " :refund_reason, :gmt_refund)",
            refund,
        )

    def due_timers(self, now: float, limit: int) -> list[str]:
        """Trades whose time_expire (unpaid) or refund window (paid) has passed."""
        with self.connection() as conn:
            expiring = conn.execute(
                "SELECT out_trade_no FROM trades WHERE status = 'WAIT_BUYER_PAY'"
                " AND expire_at <= ? LIMIT ?",
                (now, limit),
            ).fetchall()
            finishing = conn.execute(
                "SELECT out_trade_no FROM trades WHERE status = 'TRADE_SUCCESS'"
                " AND finish_at <= ? LIMIT ?",
                (now, limit),
            ).fetchall()
        return [row[0] for row in [*expiring, *finishing]]

    def has_activity(self, start: str, end: str) -> bool:
        """Whether a trade was paid or a refund made in [start, end) (Beijing time text)."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM trades WHERE gmt_payment >= ? AND gmt_payment < ?)"
                " OR EXISTS (SELECT 1 FROM refunds WHERE gmt_refund >= ? AND gmt_refund < ?)",
                (start, end, start, end),
            ).fetchone()
        return bool(row[0])

    def bill_rows(self, start: str, end: str) -> Iterator[tuple[str, sqlite3.Row]]:
        """``("trade" | "refund", row)`` in [start, end), by completion time, streamed.

        Two index-ordered cursors merged here, so no sort and no list of the day's rows.
        """
        with self.connection() as conn:
            trades = conn.execute(
                "SELECT trade_no, out_trade_no, subject, gmt_create, gmt_payment AS finished,"
                " buyer_logon_id, total_amount, '' AS out_request_no, total_amount AS amount"
                " FROM trades WHERE gmt_payment >= ? AND gmt_payment < ? ORDER BY gmt_payment",
                (start, end),
            )
            refunds = conn.execute(
                "SELECT t.trade_no, t.out_trade_no, t.subject, t.gmt_create,"
                " r.gmt_refund AS finished, t.buyer_logon_id, t.total_amount, r.out_request_no,"
                " r.refund_amount AS amount"
                " FROM refunds r JOIN trades t ON t.out_trade_no = r.out_trade_no"
                " WHERE r.gmt_refund >= ? AND r.gmt_refund < ? ORDER BY r.gmt_refund",
                (start, end),
            )
            try:
                yield from heapq.merge(
                    (("trade", row) for row in _batches(trades)),
                    (("refund", row) for row in _batches(refunds)),
                    key=lambda item: item[1]["finished"],
                )
            finally:
                trades.close()
                refunds.close()

    def insert_trades(
        self, trades: Iterable[tuple[Any, ...]], refunds: Iterable[tuple[Any, ...]]
    ) -> None:
        """Bulk insert rows in TRADE_COLUMNS order and refund rows, in one transaction."""
        marks = ", ".join("?" for _ in TRADE_COLUMNS.split(","))
        with self.write() as conn:
            conn.executemany(f"INSERT INTO trades ({TRADE_COLUMNS}) VALUES ({marks})", trades)
            conn.executemany(
                "INSERT INTO refunds (out_trade_no, out_request_no, refund_amount,"
                " refund_reason, gmt_refund) VALUES (?, ?, ?, ?, ?)",
                refunds,
            )

    # -- notifications --------------------------------------------------------------------
    @staticmethod
    def insert_notification(conn: sqlite3.Connection, note: dict[str, Any]) -> int:
        cur = conn.execute(
            "INSERT INTO notifications (notify_id, out_trade_no, trade_status, url, params,"
            " state, next_at, created_at) VALUES (:notify_id, :out_trade_no, :trade_status,"
            " :url, :params, :state, :next_at, :created_at)",
            note,
        )
        return int(cur.lastrowid or 0)

    def due_notifications(self, now: float, exclude: set[int], limit: int = 64) -> list[dict]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM notifications WHERE state = 'pending' AND next_at <= ?"
                " ORDER BY next_at, id LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall()
        return [dict(r) for r in rows if r["id"] not in exclude][:limit]

    def next_due_at(self) -> float | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT MIN(next_at) FROM notifications WHERE state = 'pending'"
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def held_notifications(self) -> list[dict[str, Any]]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM notifications WHERE state = 'held' ORDER BY id"
            ).fetchall()
        return [dict(r) for r in rows]

    def finish_delivery(
        self, note_id: int, attempts: list[dict[str, Any]], state: str, next_at: float | None
    ) -> None:
        with self.write() as conn:
            row = conn.execute(
                "SELECT attempts, deliveries, state FROM notifications WHERE id = ?", (note_id,)
            ).fetchone()
            if row is None or row["state"] != "pending":
                return
            history = json.loads(row["attempts"]) + attempts
            conn.execute(
                "UPDATE notifications SET attempts = ?, deliveries = ?, state = ?, next_at = ?"
                " WHERE id = ?",
                (json.dumps(history), row["deliveries"] + 1, state, next_at, note_id),
            )

    def schedule(self, note_ids: list[int], times: list[float]) -> None:
        with self.write() as conn:
            for note_id, when in zip(note_ids, times, strict=True):
                conn.execute(
                    "UPDATE notifications SET state = 'pending', next_at = ? WHERE id = ?",
                    (when, note_id),
                )

    def flush_notifications(self, now: float) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE notifications SET state = 'pending', next_at = ?"
                " WHERE state IN ('pending', 'held')",
                (now,),
            )
            return cur.rowcount

    def list_notifications(self, out_trade_no: str | None = None) -> list[dict[str, Any]]:
        with self.connection() as conn:
            if out_trade_no:
                rows = conn.execute(
                    "SELECT * FROM notifications WHERE out_trade_no = ? ORDER BY id",
                    (out_trade_no,),
                ).fetchall()
            else:
                rows = conn.execute("SELECT * FROM notifications ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    # -- renewed signing certificates (certificate mode) ----------------------------------
    def insert_signing_cert(self, cert: dict[str, Any]) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO signing_certs (setup, sn, chain_pem, key_pem, trusted, created_at)"
                " VALUES (:setup, :sn, :chain_pem, :key_pem, :trusted, :created_at)",
                cert,
            )

    def signing_certs(self, setup: str) -> list[dict[str, Any]]:
        """The certificates renewed under ``setup``, oldest first (the last is current)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM signing_certs WHERE setup = ? ORDER BY id", (setup,)
            ).fetchall()
        return [dict(r) for r in rows]

    def reset(self) -> None:
        """Forget trades, refunds and notifications (renewed certificates stay: they are the
        gateway's identity, which merchants may have cached, not test data)."""
        with self.write() as conn:
            conn.execute("DELETE FROM trades")
            conn.execute("DELETE FROM refunds")
            conn.execute("DELETE FROM notifications")
