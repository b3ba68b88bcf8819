"""The intake's one HTTP entry: `PUT /payment/status/` and `POST /payment/alipay/notify/` as a
plain ASGI app, whatever the database and whatever serves it.

The production web (config/asgi.py) routes the two paths here ahead of Django: no middleware,
no thread per request; Django's request machinery cost more CPU than the intake's own work.
Django serves the same app through infra/asgi_bridge.py (the WSGI module, runserver, the test
client), so every entry answers alike. This module is plumbing only: methods, the body and its
limits (read by infra/bodies.py, as Django's bodies are bounded), the media type, the answer's
bytes. The decisions are in payment/intake/core.py.
"""
import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from infra.bodies import BodyIncomplete, BodyTooLarge, body_read
from payment.intake import core, params
from payment.intake.store import DjangoStore, IntakeStore, PsycopgStore, is_postgresql
from payment.models import EventSource

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STATUS_PATH = "/payment/status/"
NOTIFY_PATH = "/payment/alipay/notify/"
PATHS = frozenset({STATUS_PATH, NOTIFY_PATH})
METHODS = {STATUS_PATH: ("PUT", "POST"), NOTIFY_PATH: ("POST",)}


def body_limit() -> int:
    return min(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or params.MAX_BODY_SIZE, params.MAX_BODY_SIZE)


class IntakeApp:
    """The ASGI app for PATHS, over one store."""

    def __init__(self, store: IntakeStore) -> None:
        self.store = store

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope["path"]
        source = EventSource.NOTIFY if path == NOTIFY_PATH else EventSource.RETURN
        if scope["method"] not in METHODS[path]:
            await _respond(send, core.Answer(405, text=""),
                           allow=", ".join(METHODS[path]).encode())
            return
        headers = dict(scope.get("headers", ()))
        try:
            body = await body_read(receive, headers, body_limit())
        except BodyTooLarge:
            await _respond(send, core.too_large_answer(source))
            return
        except BodyIncomplete:
            await _respond(send, core.incomplete_answer(source))
            return
        remote_addr = scope["client"][0] if scope.get("client") else None
        content_type = params.media_type(headers.get(b"content-type", b"").decode("latin-1"))
        if source == EventSource.NOTIFY:
            answer = await core.notification_receive(
                self.store, body=body, content_type=content_type, remote_addr=remote_addr)
        else:
            answer = await core.return_receive(
                self.store, query=scope.get("query_string", b""), body=body,
                content_type=content_type, remote_addr=remote_addr)
        await _respond(send, answer)


async def _respond(send: Send, answer: core.Answer, allow: bytes | None = None) -> None:
    if answer.text is not None:
        body, content_type = answer.text.encode(), b"text/plain; charset=utf-8"
    else:
        body, content_type = json.dumps(answer.body).encode(), b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", allow))
    if answer.retry_after:
        headers.append((b"retry-after", str(answer.retry_after).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def server_app() -> IntakeApp:
    """The app an ASGI server runs: PostgreSQL from its event loop, any other database through
    Django's connection."""
    return IntakeApp(PsycopgStore() if is_postgresql() else DjangoStore())


# The app Django serves these paths with (infra/asgi_bridge.py): Django's own connection.
django_app = IntakeApp(DjangoStore())
