"""Static files for the ASGI server: whitenoise's files and headers, sent from the event loop.

Under Django's ASGI handler whitenoise's middleware answers with a FileResponse, a synchronous
iterator, which Django can only drain by warning "StreamingHttpResponse must consume
synchronous iterators in order to serve them asynchronously" (whitenoise 6.12, the newest, has
no async mode). This app keeps whitenoise's decisions (which files under STATIC_URL, from
STATIC_ROOT and, in development, the finders; Content-Type, Cache-Control, ETag and
Last-Modified, 304s, compressed variants, ranges) by asking the very middleware Django builds
from the same settings, and only does the sending itself: the file read in chunks off the
event loop. Django's SecurityMiddleware runs over each answer as it does on Django's path
(HTTPS redirect in production, nosniff, referrer policy, HSTS).

The ASGI router sends a request here when `handles(path)`; everything else goes to Django.
"""
import asyncio
import io
from functools import cache
from typing import Any, BinaryIO

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, HttpResponseNotFound
from django.middleware.security import SecurityMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.responders import StaticFile

CHUNK_SIZE = 64 * 1024


@cache
def _whitenoise() -> WhiteNoiseMiddleware:
    # Built on first use, after settings are configured: STATIC_ROOT is scanned (and, in
    # development, the finders listed) once per process, as Django's handler does.
    return WhiteNoiseMiddleware(get_response=None)


@cache
def _security() -> SecurityMiddleware:
    return SecurityMiddleware(lambda request: HttpResponse())


def _static_file(path: str) -> StaticFile | None:
    files = _whitenoise()
    found = files.find_file(path) if files.autorefresh else files.files.get(path)
    return found if isinstance(found, StaticFile) else None


def handles(path: str) -> bool:
    """Whether `path` (the request's path, without a root path) is a static file whitenoise
    serves; other paths under STATIC_URL stay Django's (its 404 page)."""
    files = _whitenoise()
    return path.startswith(files.static_prefix) and _static_file(path) is not None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A static file, as whitenoise's middleware answers it under Django."""
    request = ASGIRequest(scope, io.BytesIO())
    redirect = _security().process_request(request)
    if redirect is not None:
        await _send(send, request, redirect, body=redirect.content)
        return
    static_file = _static_file(request.path_info)
    if static_file is None:
        missing = HttpResponseNotFound(b"Not Found\n", content_type="text/plain")
        await _send(send, request, missing, body=missing.content)
        return
    # Opens the file (a local disk's open), picks the compressed variant and the range.
    answer = static_file.get_response(request.method, request.META)
    response = HttpResponse(status=int(answer.status))
    del response["Content-Type"]  # whitenoise's headers say it, or there is no body
    for name, value in answer.headers:
        response[name] = value
    await _send(send, request, response, file=answer.file)


async def _send(send: Any, request: ASGIRequest, response: HttpResponse, *,
                body: bytes = b"", file: BinaryIO | None = None) -> None:
    """The response's status and headers, with the security middleware's added, then the
    body: `body`, or the file read in chunks off the event loop."""
    _security().process_response(request, response)
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in response.items()]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})
    if file is None:  # HEAD, 304, 405, 416 and our own short answers
        await send({"type": "http.response.body", "body": body})
        return
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        file.close()
