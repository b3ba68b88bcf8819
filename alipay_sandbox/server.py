"""HTTP front end: a threading HTTP/1.1 server (keep-alive) in front of :class:`Sandbox`."""

from __future__ import annotations

import logging
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .app import Sandbox
from .gateway import Reply

log = logging.getLogger("alipay_sandbox.http")
MAX_BODY = 1 << 20


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AlipaySandbox/1.0"
    server: SandboxHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _read_body(self) -> bytes | None:
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            self._send(Reply(400, b"bad request body", "text/plain;charset=utf-8"), method)
            self.close_connection = True
            return
        split = urlsplit(self.path)
        content_type = self.headers.get("Content-Type", "")
        route_method = "GET" if method == "HEAD" else method
        try:
            reply = self.server.sandbox.route(
                route_method, split.path, split.query, body, content_type
            )
        except Exception:
            log.exception("error handling %s %s", method, split.path)
            reply = Reply(500, b"internal sandbox error", "text/plain;charset=utf-8")
        if reply.hang_s is not None:
            time.sleep(reply.hang_s)
            self.close_connection = True
            return
        self._send(reply, method)

    def _send(self, reply: Reply, method: str) -> None:
        if reply.stream is not None:
            self._send_stream(reply, method)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        # Headers and body in one write: no small-segment delay on keep-alive connections.
        # _headers_buffer is BaseHTTPRequestHandler's own buffer (undeclared in typeshed).
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
        if method != "HEAD":
            self._headers_buffer.append(reply.body)  # type: ignore[attr-defined]
        self.flush_headers()

    def _send_stream(self, reply: Reply, method: str) -> None:
        """Chunked transfer: the body is produced while it is sent."""
        stream = reply.stream
        assert stream is not None
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method == "HEAD":
                return
            for chunk in stream:
                if chunk:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:  # the client went away mid-body
            log.debug("stream to client ended: %s", type(exc).__name__)
            self.close_connection = True
        except Exception:
            # Headers are out: all that is left is to end the connection mid-body.
            log.exception("error while streaming a body")
            self.close_connection = True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):
            # The request line would carry signed parameters: log the path only.
            log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, args[1:2])

    def log_error(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http error: " + format, *args)
