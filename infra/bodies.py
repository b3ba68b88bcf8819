"""Request bodies over ASGI: refused above a limit before they are read, by their
Content-Length, or as soon as a body sent without one passes the limit.

Two users: the intake's own app reads its bodies with `body_read` (payment/intake/asgi.py), and
`BodyLimitMiddleware` stands in front of Django's ASGI handler (config/asgi.py), which would
otherwise read a whole body, to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE, before
DATA_UPLOAD_MAX_MEMORY_SIZE is checked, and then answer 400.
"""
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Django's handler types its messages as Mappings

TOO_LARGE = b"Request body too large.\n"


class BodyTooLarge(Exception):
    pass


class BodyIncomplete(Exception):
    pass


def declared_length(headers: dict[bytes, bytes], limit: int) -> int | None:
    """The body's Content-Length, if it has one; BodyTooLarge above `limit`."""
    if b"content-length" not in headers:
        return None
    try:
        declared = int(headers[b"content-length"])
    except ValueError:
        raise BodyIncomplete from None
    if declared > limit:
        raise BodyTooLarge
    return declared


async def body_read(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole body, refused above `limit` before it is read (by its Content-Length) or as
    soon as it passes the limit, and refused when it ends before its Content-Length."""
    declared = declared_length(headers, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    if declared is not None and size != declared:
        raise BodyIncomplete
    return b"".join(chunks)


class BodyLimitMiddleware:
    """413 for a body above DATA_UPLOAD_MAX_MEMORY_SIZE, before the app behind reads it.

    A body with a Content-Length within the limit passes untouched (the server delivers no more
    than it declares). A body without one (chunked) is counted as the app receives it: once it
    passes the limit the app gets a disconnect, as if the client had gone, and the client 413.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        try:
            declared = declared_length(headers, limit)
        except BodyTooLarge:
            await _too_large(send)
            return
        except BodyIncomplete:
            declared = None  # not a number: the app's to refuse (servers refuse it first)
        if declared is not None or b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return

        received = 0
        refused = False
        started = False

        async def receive_counted() -> dict[str, Any]:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def send_watched(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive_counted, send_watched)
        if refused and not started:
            await _too_large(send)


async def _too_large(send: Send) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(TOO_LARGE)).encode())]})
    await send({"type": "http.response.body", "body": TOO_LARGE})
