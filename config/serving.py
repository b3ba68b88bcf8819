"""The gunicorn worker class that serves config.asgi: uvicorn on uvloop and httptools.

uvicorn's access log line carries the path with its query string, and Alipay's return
parameters (with their signature) arrive in it: the query string is cut before it is logged
(control characters in it are escaped by the log formatters, infra/logs.py, as in every line).

gunicorn's FORWARDED_ALLOW_IPS (from the environment, the command line or a configuration
file) names the trusted proxies; the application applies their X-Forwarded-For/-Proto itself,
after it has decided on the connection's own peer whether to keep its X-Request-ID
(config/asgi.py). So uvicorn's own pass is off, and the worker hands gunicorn's value to the
settings before it loads the application.
"""
import logging
import os
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker


class QuerylessAccessLog(logging.Filter):
    """uvicorn.access records are (client, method, path?query, http version, status): the
    query string is cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on",
                                     "proxy_headers": False}

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
