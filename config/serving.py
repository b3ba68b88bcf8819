"""The gunicorn worker class that serves config.asgi: uvicorn on uvloop and httptools.

uvicorn's access log line carries the path with its query string, and Alipay's return
parameters (with their signature) arrive in it: the query string is cut before it is logged.
"""
import logging
import re
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class QuerylessAccessLog(logging.Filter):
    """uvicorn.access records are (client, method, path?query, http version, status).

    The query string is cut, and control characters in the path are escaped: a `%0A` in a
    URL must not write a line of its own into the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", args[2].split("?", 1)[0])
            record.args = (*args[:2], path, *args[3:])
        return True


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logging.getLogger("uvicorn.access").addFilter(QuerylessAccessLog())

    def load_wsgi(self) -> None:
        try:
            super().load_wsgi()
        except SystemExit as exc:
            # A start-up guard refused (key files, production settings). gunicorn restarts a
            # worker that exits otherwise, forever; its boot error code stops the server.
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr, flush=True)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
