"""Serving a plain ASGI app from a Django view, so that every entry the project ships (the
ASGI server, the WSGI module, `manage.py runserver`, Django's test client) answers a path the
ASGI server routes ahead of Django with the very same app.

The view only translates: request to scope and body messages, and the app's messages back to
an HttpResponse. The body is read in chunks as the app asks for it, so an app that refuses a
body by its Content-Length never reads it.
"""
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

CHUNK = 64 * 1024


def scope_from(request: HttpRequest) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    for key, value in request.META.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        if value != "":
            headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.META.get("SERVER_PROTOCOL", "HTTP/1.1").rpartition("/")[2],
        "method": request.method, "scheme": request.scheme, "path": request.path,
        "raw_path": request.path.encode(), "root_path": "",
        "query_string": request.META.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers,
        "client": (request.META.get("REMOTE_ADDR") or "", 0),
        "server": (request.get_host().rpartition(":")[0] or request.get_host(),
                   int(request.get_port() or 0)),
    }


def asgi_view(app: ASGIApp) -> Callable[[HttpRequest], HttpResponse]:
    """A Django view that serves `app`."""

    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        return async_to_sync(_serve)(app, request)

    return view


async def _serve(app: ASGIApp, request: HttpRequest) -> HttpResponse:
    started: dict[str, Any] = {}
    parts: list[bytes] = []
    finished = False

    async def receive() -> dict[str, Any]:
        if finished:
            return {"type": "http.disconnect"}
        chunk = await sync_to_async(request.read)(CHUNK)
        # The body ends with an empty read, not a short one: a stream may return less than
        # asked before its end.
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    async def send(message: dict[str, Any]) -> None:
        nonlocal finished
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            finished = finished or not message.get("more_body", False)

    await app(scope_from(request), receive, send)
    response = HttpResponse(b"".join(parts), status=started.get("status", 500))
    for name, value in started.get("headers", ()):
        if name.lower() != b"content-length":
            response[name.decode("latin-1")] = value.decode("latin-1")
    return response
