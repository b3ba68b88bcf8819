"""The gunicorn worker class that serves config.asgi: uvicorn on uvloop and httptools.

uvicorn's access log line carries the path with its query string, and Alipay's return
parameters (with their signature) arrive in it: the query string is cut before it is logged
(control characters in it are escaped by the log formatters, infra/logs.py, as in every line).

gunicorn's FORWARDED_ALLOW_IPS (from the environment, the command line or a configuration
file) names the trusted proxies; the application applies their X-Forwarded-For/-Proto itself,
after it has decided on the connection's own peer whether to keep its X-Request-ID
(config/asgi.py). So uvicorn's own pass is off, and the worker hands gunicorn's value to the
settings before it loads the application.

uvicorn's httptools protocol bounds neither a request's header section nor the time a request
takes to arrive, and httptools joins a header that arrives in pieces by copying it whole each
time: one 64 MiB header held a worker's event loop for seconds, a larger one got it killed.
The proxy has these bounds (deploy/nginx.conf); BoundedHttpToolsProtocol gives them to the web
itself, which is also reached without the proxy: HEADERS_MAX_SIZE and HEADERS_MAX_COUNT (then
431, before more of the section is parsed) and HEADERS_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS
(then 408 and the connection closed), on every path, Django's and the intake's alike.
"""
import asyncio
import functools
import logging
import os
import sys
from typing import Any

import httptools
from django.conf import settings
from gunicorn.arbiter import Arbiter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class QuerylessAccessLog(logging.Filter):
    """uvicorn.access records are (client, method, path?query, http version, status): the
    query string is cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


# How often each worker looks for requests past their time-out: the precision of the time-outs.
SWEEP_SECONDS = 0.25


@functools.cache
def _bounds() -> tuple[int, int, float, float]:
    """Read once per worker, after its app (and so Django's settings) is loaded."""
    return (settings.HEADERS_MAX_SIZE, settings.HEADERS_MAX_COUNT,
            settings.HEADERS_TIMEOUT_SECONDS, settings.BODY_TIMEOUT_SECONDS)


class HeadRefused(Exception):
    """A header section (or a chunked body's trailer section) over HEADERS_MAX_SIZE bytes or
    HEADERS_MAX_COUNT fields."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's protocol for one connection, with the bounds above.

    A header section is counted in the bytes the parser is fed, not in what it has joined:
    once a read would take it over the limit, the parser gets only the part that fits, and the
    request is refused unless its header section ended within it. In a body, what is not body
    (chunk sizes, trailer fields, which httptools joins alike) counts against the same limit.

    The time-outs are deadlines that one sweep per worker checks (`_sweep`), not a timer per
    connection: a request that arrives in one read costs none, and a connection one number.
    A new connection has until its first header section ends; a header section begun, until
    it ends; a body, from the end of its header section until it ends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        (self.headers_max_size, self.headers_max_count, self.headers_timeout,
         self.body_timeout) = _bounds()
        self.in_head = True  # reading a header section, or waiting for the next request
        self.head_size = 0  # its bytes so far, counted in whole reads
        self.body_size = 0  # the body's bytes so far
        self.framing_size = 0  # the bytes of a body that are not body
        self.transitions = 0  # header section to body and back: tells whether a read ended one
        self.deadline: float | None = None  # in the loop's time

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = self.loop.time() + self.headers_timeout  # one that sends nothing too
        _sweep_start(self.loop, self.server_state.connections)

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self._feed(data)
        except HeadRefused:
            self._refuse(431)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadRefused):  # raised by on_header, in the parser
                self._refuse(431)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.deadline is None:
            if not self.in_head:
                self.deadline = self.loop.time() + self.body_timeout
            elif self.head_size or (self.cycle is not None and self.cycle.response_complete):
                # A header section begun; or blank lines between requests, which stopped the
                # keep-alive timer: they keep no idle connection either.
                self.deadline = self.loop.time() + self.headers_timeout

    def _feed(self, data: bytes | memoryview) -> None:
        transitions = self.transitions
        if not self.in_head:
            body_size = self.body_size
            self.parser.feed_data(data)
            if self.transitions == transitions:  # the same body goes on
                self.framing_size += len(data) - (self.body_size - body_size)
                if self.framing_size > self.headers_max_size:
                    raise HeadRefused
            return
        room = self.headers_max_size - self.head_size
        if len(data) <= room:
            self.parser.feed_data(data)
            if self.transitions == transitions:  # the same header section goes on
                self.head_size += len(data)
            return
        view = memoryview(data)
        self.parser.feed_data(view[:room])
        if self.transitions == transitions:
            raise HeadRefused
        self._feed(view[room:])  # what follows the header section that fitted

    # -- the parser's callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.headers_max_count:
            raise HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.body_size = self.framing_size = 0
        self.transitions += 1
        self.deadline = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_head = True
        self.head_size = 0
        self.transitions += 1
        self.deadline = None
        super().on_message_complete()

    # -- refusing -----------------------------------------------------------------------------

    def deadline_passed(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.in_head and not self.head_size:
            self.transport.close()  # nothing asked, nothing to answer
        elif self.in_head:
            self.logger.info("Header section not received within %s s: 408", self.headers_timeout)
            self._refuse(408)
        else:
            self.logger.info("Body not received within %s s: 408", self.body_timeout)
            self._refuse(408)

    def _refuse(self, status: int) -> None:
        """Answer `status` and close; only close when an answer is already under way or sent
        for the request (ours would be read as part of it, or as the next one's)."""
        self.deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.in_head:
            unanswered = cycle is None or cycle.response_complete  # the previous request's
        else:
            unanswered = cycle is not None and not cycle.response_started
            if unanswered:
                # Its app may be waiting for the body: it gets a disconnect, and answers no more.
                cycle.disconnected = True
                cycle.message_event.set()
        if unanswered:
            self.transport.write(b"".join([
                STATUS_LINE[status],
                *(b"%s: %s\r\n" % header for header in self.server_state.default_headers),
                b"content-length: 0\r\nconnection: close\r\n\r\n",
            ]))
        self.transport.close()


_swept_loop: asyncio.AbstractEventLoop | None = None  # a worker runs one loop


def _sweep_start(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    global _swept_loop
    if loop is not _swept_loop:
        _swept_loop = loop
        loop.call_later(SWEEP_SECONDS, _sweep, loop, connections)


def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """Every SWEEP_SECONDS: the worker's connections past their deadline are refused."""
    now = loop.time()
    for connection in list(connections):
        deadline = getattr(connection, "deadline", None)
        if deadline is not None and deadline <= now:
            connection.deadline_passed()
    loop.call_later(SWEEP_SECONDS, _sweep, loop, connections)


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": BoundedHttpToolsProtocol,
                                     "lifespan": "on", "proxy_headers": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logging.getLogger("uvicorn.access").addFilter(QuerylessAccessLog())

    def load_wsgi(self) -> None:
        os.environ["FORWARDED_ALLOW_IPS"] = ",".join(self.cfg.forwarded_allow_ips)
        try:
            super().load_wsgi()
        except SystemExit as exc:
            # A start-up guard refused (key files, production settings). gunicorn restarts a
            # worker that exits otherwise, forever; its boot error code stops the server.
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr, flush=True)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
