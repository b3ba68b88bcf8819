"""The ASGI application that production serves (gunicorn with uvicorn workers, see Procfile).

`PUT /payment/status/` waits for the workers without holding a thread, which only an event
loop can do. The two endpoints Alipay and the returning browser hit in bursts are authenticated
by Alipay's signature and need none of the browser middleware (sessions, CSRF,
authentication, messages): they are served by the intake's own ASGI app
(payment/intake/asgi.py) on every database, PostgreSQL through an async pool. `GET /metrics`
(infra/metrics.py) is served ahead of Django too; every request gets its request id first
(infra/logs.py), then its client and scheme from a trusted proxy's X-Forwarded-For/-Proto
(infra/proxies.py). Django serves the same apps on the same paths (config/urls.py), so the
WSGI module and runserver answer alike. Static files are sent from the event loop too
(infra/static.py). Header sections, body sizes and slow clients are bounded by the server
(config/serving.py) and, for Django's bodies, by infra/bodies.py.
"""
import asyncio
import os
from typing import Any, cast

# Each request's database work runs on a short-lived thread: connections come from a pool.
os.environ.setdefault("DATABASE_POOL", "true")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from infra import logs, metrics, redis_client, static  # noqa: E402
from infra.bodies import BodyLimitMiddleware  # noqa: E402
from infra.checks import checks_require  # noqa: E402
from infra.proxies import TrustedProxies  # noqa: E402
from payment.gateway import client_warm, keys_require  # noqa: E402
from payment.intake import asgi as intake  # noqa: E402
from payment.intake.store import PsycopgStore  # noqa: E402

keys_require()
checks_require()

# A body above DATA_UPLOAD_MAX_MEMORY_SIZE is refused before Django reads it (infra/bodies.py).
django_application = BodyLimitMiddleware(ASGIHandler())
intake_application = intake.server_app()


async def _route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["path"] == metrics.PATH:
        # Prometheus asks by address, over plain HTTP: no host check, no HTTPS redirect.
        await metrics.app(scope, receive, send)
    elif scope["type"] == "http" and scope["path"] in intake.PATHS:
        await intake_application(scope, receive, send)
    elif scope["type"] == "http" and static.handles(scope["path"]):
        # Whitenoise's files, sent from the event loop (infra/static.py).
        await static.app(scope, receive, send)
    else:
        await django_application(scope, receive, send)


# Every request, on whichever path, has a request id in its log lines and its answer; it is
# decided on the connection's own peer, before the proxy's X-Forwarded-For replaces it (the
# server's own pass is off, config/serving.py): one list of proxies, FORWARDED_ALLOW_IPS, for
# both.
# (uvicorn types the ASGI messages; this module passes them on as plain dicts.)
_forwarded: logs.ASGIApp = cast(logs.ASGIApp, ProxyHeadersMiddleware(
    cast(Any, _route), trusted_hosts=settings.FORWARDED_ALLOW_IPS))
application = logs.RequestIdASGIMiddleware(
    _forwarded, trusted_proxies=TrustedProxies(settings.FORWARDED_ALLOW_IPS))


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            redis_client.server_loop_started(asyncio.get_running_loop())
            await asyncio.to_thread(static.handles, "/")  # the static files, scanned once
            # Alipay's keys and certificates (some from the database), off the event loop.
            await asyncio.to_thread(client_warm)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await redis_client.server_loop_stopping(asyncio.get_running_loop())
            if isinstance(intake_application.store, PsycopgStore):
                await intake_application.store.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
