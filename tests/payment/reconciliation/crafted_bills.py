"""Trade bills made by hand, well-formed or not, and a test gateway's file host that serves them
(or serves worse: an endless body, a slow drip) over HTTP."""
import io
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alipay_sandbox.bills import COLUMNS, DETAIL_END, DETAIL_START, NEWLINE

DETAIL_NAME = "20880000000000010156_20260101_业务明细.csv"
SUMMARY_NAME = "20880000000000010156_20260101_业务明细(汇总).csv"


def bill_row(trade_no: str, out_trade_no: str, amount: str, *, kind: str = "交易",
             out_request_no: str = "", subject: str = "Book") -> list[str]:
    """One detail line as Alipay writes it (values padded with a tab)."""
    cells = dict.fromkeys(COLUMNS, "0.00")
    cells.update({
        "支付宝交易号": f"{trade_no}\t", "商户订单号": f"{out_trade_no}\t", "业务类型": f"{kind}\t",
        "商品名称": subject, "创建时间": "2026-01-01 10:00:00", "完成时间": "2026-01-01 10:00:05",
        "门店编号": "\t", "门店名称": "\t", "操作员": "\t", "终端号": "\t",
        "对方账户": "abc***@sandbox.com\t", "订单金额（元）": amount, "商家实收（元）": amount,
        "券名称": "", "退款批次号/请求号": f"{out_request_no}\t", "备注": "",
    })
    return [cells[name] for name in COLUMNS]


def bill_text(rows: Iterable[list[str] | str]) -> str:
    """The detail file: heading, the marked block (rows as cells, or a raw line), totals."""
    lines = ["#支付宝业务明细查询", "#账号：[20880000000000010156]",
             "#起始日期：[2026年01月01日 00:00:00]   终止日期：[2026年01月02日 00:00:00]",
             DETAIL_START, ",".join(COLUMNS)]
    lines += [row if isinstance(row, str) else ",".join(row) for row in rows]
    lines += [DETAIL_END, "#交易合计：0笔", "#导出时间：[2026年01月02日 09:12:00]", ""]
    return NEWLINE.join(lines)


def bill_zip(detail: str | bytes | None, *, name: str = DETAIL_NAME,
             extra: dict[str, bytes] | None = None,
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip as Alipay's: the detail CSV (GBK) and the summary beside it, plus `extra` entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        if detail is not None:
            data = detail.encode("gbk") if isinstance(detail, str) else detail
            archive.writestr(name, data)
        archive.writestr(SUMMARY_NAME, "#支付宝业务汇总查询\r\n".encode("gbk"))
        for extra_name, data in (extra or {}).items():
            archive.writestr(extra_name, data)
    return buffer.getvalue()


def long_line_zip(chars: int) -> bytes:
    """A detail CSV whose one data line is `chars` characters long: compresses about 1000:1."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(DETAIL_NAME, "w") as out:
            out.write(bill_text([]).split(DETAIL_END)[0].encode("gbk"))
            block = b"9" * (1 << 20)
            for _ in range(chars >> 20):
                out.write(block)
            out.write(b"9" * (chars & ((1 << 20) - 1)))
    return buffer.getvalue()


def encrypted(data: bytes) -> bytes:
    """The zip with every entry flagged encrypted (general purpose bit 0), as zipfile reads it."""
    patched = bytearray(data)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = patched.find(signature)
        while at >= 0:
            patched[at + flag_at] |= 0x01
            at = patched.find(signature, at + 4)
    return bytes(patched)


Behaviour = Callable[[BaseHTTPRequestHandler], None]


def endless(limit: int) -> Behaviour:
    """An answer with no length whose body goes on (until `limit` bytes, so a test ends)."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < limit:
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            handler.server.sent[handler.path] = sent  # type: ignore[attr-defined]
    return answer


def announced(length: int) -> Behaviour:
    """An answer announcing `length` bytes; it sends a few and waits for the client to go."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        try:
            handler.wfile.write(b"PK\x03\x04" + b"\0" * 1024)
            handler.wfile.flush()
            time.sleep(2)
        except OSError:
            pass
    return answer


def redirect(location: str) -> Behaviour:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def drip(*, interval: float, seconds: float, in_headers: bool = False) -> Behaviour:
    """One byte every `interval` seconds (of the headers, or of the body), for `seconds`."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        stream = handler.wfile
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/zip\r\n"
        try:
            if in_headers:
                data = head + b"X-Padding: " + b"a" * 10_000
            else:
                stream.write(head + b"Content-Length: 100000\r\n\r\n")
                stream.flush()
                data = b"PK\x03\x04" + b"\0" * 100_000
            ends = time.monotonic() + seconds
            for byte in data:
                if time.monotonic() > ends:
                    break
                stream.write(bytes([byte]))
                stream.flush()
                time.sleep(interval)
        except OSError:
            pass
    return answer


class TlsDrip:
    """A TCP server that answers a TLS ClientHello with the start of a record, a byte every
    `interval` seconds, for `seconds`: a handshake that never ends."""

    def __init__(self, *, interval: float, seconds: float) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._interval, self._seconds = interval, seconds
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            ends = time.monotonic() + self._seconds
            record = b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000
            try:
                for byte in record:
                    if time.monotonic() > ends:
                        break
                    connection.sendall(bytes([byte]))
                    time.sleep(self._interval)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()


class BillHost:
    """A threaded HTTP server on 127.0.0.1 serving bills by path; it counts what it is asked."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Behaviour] = {}
        self.requests: list[str] = []
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                requests.append(self.path)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                elif isinstance(route, bytes):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/zip")
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)
                else:
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.sent = {}  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def serve(self, path: str, body: bytes | Behaviour, host: str = "127.0.0.1") -> str:
        self.routes[path] = body
        return f"http://{host}:{self.port}{path}"

    def sent(self, path: str) -> int:
        return int(self.server.sent.get(path, 0))  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
