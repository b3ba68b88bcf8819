"""infra/static.py: the ASGI app that serves static files as whitenoise's middleware does,
with the body sent from the event loop (no synchronous iterator for Django's handler to
drain with a warning)."""
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders

from infra import static

CSS = "/static/admin/css/base.css"


def _call(path: str, method: str = "GET",
          headers: tuple[tuple[bytes, bytes], ...] = ()) -> list[dict[str, Any]]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000), "headers": [(b"host", b"127.0.0.1:8000"), *headers]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # On a thread of its own: a browser test's Playwright keeps a loop in the main thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, static.app(scope, receive, send)).result()
    return sent


def _headers(start: dict[str, Any]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in start["headers"]}


def test_handles_static_files_only() -> None:
    assert static.handles(CSS)
    assert not static.handles("/static/admin/css/no-such-file.css")
    assert not static.handles("/admin/css/base.css")
    assert not static.handles("/orders/")


def test_serves_a_static_file_with_its_type_caching_headers_and_a_chunked_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(static, "CHUNK_SIZE", 1024)
    expected = Path(finders.find("admin/css/base.css")).read_bytes()

    start, *bodies = _call(CSS)

    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = _headers(start)
    assert headers["content-type"] == 'text/css; charset="utf-8"'
    assert headers["content-length"] == str(len(expected))
    assert headers["cache-control"].startswith("max-age=")
    assert headers["etag"] and headers["last-modified"]
    assert headers["x-content-type-options"] == "nosniff"  # as Django's security middleware
    # Sent in pieces from the event loop, the last one closing the body.
    assert len(bodies) > 2
    assert all(message["more_body"] for message in bodies[:-1])
    assert not bodies[-1].get("more_body", False)
    assert b"".join(message["body"] for message in bodies) == expected


def test_answers_head_and_a_revalidation_without_a_body() -> None:
    start, body = _call(CSS, method="HEAD")
    assert start["status"] == 200 and body["body"] == b""
    assert int(_headers(start)["content-length"]) > 0

    etag = _headers(start)["etag"]
    start, body = _call(CSS, headers=((b"if-none-match", etag.encode()),))
    assert start["status"] == 304 and body["body"] == b""


def test_refuses_other_methods_and_unknown_files() -> None:
    start, _ = _call(CSS, method="POST")
    assert start["status"] == 405 and _headers(start)["allow"] == "GET, HEAD"
    start, body = _call("/static/admin/css/no-such-file.css")
    assert start["status"] == 404 and body["body"] == b"Not Found\n"
