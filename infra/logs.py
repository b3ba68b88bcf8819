"""Log lines: JSON in production, text in development, with the ids that follow the work.

Every record gets `request_id` (the web request, or the request whose work a Celery task does)
and `task_id`; lines about a payment also carry `order_id`, `trade_no` and `event_id` as
fields (`extra=log_ids(...)`), while their messages stay readable with the same ids in them.

The request id is taken from a well-formed `X-Request-ID` that a trusted proxy sent
(FORWARDED_ALLOW_IPS, infra/proxies.py) or made here, kept in a context variable for the
request, answered in the `X-Request-ID` header, and sent with every Celery task published while
it is set (workers/observability.py). Work done at once for items that came with different
requests (a batch of stored payment events) names each item's request through
`request_origins`: a line whose field names the item carries that item's request id.

One record is one line, in both formats, whatever a logged value holds: the formatters
escape control characters (line breaks of every kind, terminal escapes) in the message and in
every field, so that no value a client sent can start a line that looks like a record of its
own. A traceback keeps its line breaks; in the text format its lines are indented.

Importable before Django is set up: gunicorn's configuration uses the formatter and filter.
"""
import contextvars
import functools
import logging
import logging.config
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

from infra.proxies import TrustedProxies

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)
TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
# While items of several requests are worked on: (the record field naming an item, the
# request id of each item).
REQUEST_ORIGINS: contextvars.ContextVar[tuple[str, Mapping[Any, str]] | None] = (
    contextvars.ContextVar("request_origins", default=None))

HEADER = "X-Request-ID"
# What a proxy may send as a request id (UUIDs, nginx's $request_id, ...); anything else is
# replaced, so a header cannot put arbitrary text into the logs.
REQUEST_ID_FORMAT = re.compile(r"[A-Za-z0-9._:-]{8,64}")
FORMATS = ("json", "text")
# Every character that can end a line (str.splitlines() breaks at each, and so do some log
# shippers) or drive a terminal: C0 and C1 controls, DEL, and Unicode's line and paragraph
# separators.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Fields holding a traceback: their line breaks are kept.
TRACEBACK_FIELDS = ("exc_info", "stack_info")


def log_format(*, configured: str, django_env: str) -> str:
    """LOG_FORMAT when given, else JSON everywhere but in development."""
    chosen = configured.strip().lower() or ("text" if django_env == "development" else "json")
    if chosen not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {configured!r}")
    return chosen


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in NAMED_ESCAPES:
        return NAMED_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def control_escape(text: str) -> str:
    """`text` with each control character written as its escape (`\\n`, `\\x1b`, `\\u2028`), as
    Python's repr writes them: on one line, and still readable."""
    return CONTROL_CHARACTERS.sub(_escape, text)


def control_escape_lines(text: str) -> list[str]:
    """A traceback's lines (split at `\\n` only), each with its control characters escaped."""
    return [control_escape(line) for line in text.split("\n")]


def _fields_escape(value: Any) -> Any:
    """A field's value with control characters escaped in every string it holds."""
    if isinstance(value, str):
        return control_escape(value)
    if isinstance(value, dict):
        return {key: _fields_escape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_fields_escape(item) for item in value]
    return value


def request_id_new() -> str:
    return uuid.uuid4().hex


def request_id_accept(value: str | bytes | None, *, trusted: bool) -> str:
    """The request id for a request that sent `value` in X-Request-ID: kept when it is
    well-formed and `trusted` (a proxy of FORWARDED_ALLOW_IPS sent it, or our own web sent the
    task), else a new one: a client must not choose the id its lines are found by, nor take
    another request's."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if trusted and value and REQUEST_ID_FORMAT.fullmatch(value):
        return value
    return request_id_new()


def request_id() -> str | None:
    return REQUEST_ID.get()


def log_ids(*, order_id: str | None = None, trade_no: str | None = None,
            event_id: int | None = None, **more: Any) -> dict[str, Any]:
    """`extra=` for a line about a payment: the three ids, null where not known."""
    return {"order_id": order_id or None, "trade_no": trade_no or None, "event_id": event_id,
            **more}


@contextmanager
def request_origins(*, field: str, origins: Mapping[Any, str]) -> Iterator[None]:
    """While working on items that came with different requests: a line whose `field` (an
    `extra=` field) names one of the items carries the request id that item came with."""
    token = REQUEST_ORIGINS.set((field, origins))
    try:
        yield
    finally:
        REQUEST_ORIGINS.reset(token)


class ContextFilter(logging.Filter):
    """Adds `request_id` and `task_id` to every record (a handler's filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            origin = None
            if (current := REQUEST_ORIGINS.get()) is not None:
                field, origins = current
                item = getattr(record, field, None)
                origin = origins.get(item) if item is not None else None
            record.request_id = origin or REQUEST_ID.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = TASK_ID.get()
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    # Never an object's repr: a request's repr carries its query string, a signature too.
    return f"<{type(value).__name__}>"


def utc_time(record: logging.LogRecord) -> str:
    """Every log line's time: UTC, ISO 8601 with a `Z`, as the API's times. The local zone
    differs between processes (Django sets TZ to the shop's zone once its settings load, the
    gunicorn master logs before that), so it is never used."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(BaseJsonFormatter):
    """One JSON object per line: time, level, logger, pid, message, then the record's fields."""

    # Objects some libraries attach (Django's request logger: the request, whose repr has the
    # query string, with Alipay's signature on a return): only their method and path are kept.
    # uvicorn's `color_message` is its message again, with terminal colours.
    DROPPED_FIELDS = ("request", "response", "color_message")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                           "process": "pid"},
            json_default=_json_default, json_ensure_ascii=False, **kwargs,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        request = log_data.pop("request", None)
        if request is not None and isinstance(getattr(request, "path", None), str):
            log_data["http_method"] = getattr(request, "method", None)
            log_data["http_path"] = request.path
        for name in self.DROPPED_FIELDS:
            log_data.pop(name, None)
        for name, value in log_data.items():
            if name in TRACEBACK_FIELDS and isinstance(value, str):
                log_data[name] = "\n".join(control_escape_lines(value))
            else:
                log_data[name] = _fields_escape(value)


class TextFormatter(logging.Formatter):
    """The development format: one line, the request id at its end when there is one; a
    traceback follows on lines of its own, indented (a record's line starts with its time)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record)

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format's steps, with the values escaped.
        record.message = control_escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        request = getattr(record, "request_id", None)
        if request:
            line = f"{line} request_id={control_escape(str(request))}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        details = [record.exc_text] if record.exc_text else []
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for text in details:
            line += "".join(f"\n  {part}" for part in control_escape_lines(text))
        return line


# Celery's, kombu's and redbeat's lines that report a broker that is away, by the start of
# their message templates: the worker's consumer retrying its connection, a task's message it
# could not acknowledge or reject, beat's run it could not send (Celery's scheduler and
# redbeat's).
BROKER_AWAY_MESSAGES = {
    "celery.worker.consumer.consumer": ("consumer: Cannot connect to",),
    "celery.worker.request": ("Couldn't ack", "Couldn't reject"),
    "kombu.message": ("Couldn't ack", "Couldn't reject"),
    "celery.beat": ("Message Error:", "Scheduler: Message Error:"),
}


@functools.cache
def broker_connection_errors() -> tuple[type[BaseException], ...]:
    """What a broker that is away raises, on Redis and on RabbitMQ: socket errors (refused,
    reset, broken pipe, timeouts), redis-py's and py-amqp's connection errors, and kombu's
    OperationalError wrapping them."""
    import amqp.exceptions
    import kombu.exceptions
    import redis.exceptions

    return (OSError, kombu.exceptions.OperationalError, amqp.exceptions.ConnectionError,
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _broker_away(value: Any) -> bool:
    """Whether `value` is an exception that says the broker is away, or was raised from one."""
    for _ in range(5):
        if not isinstance(value, BaseException):
            return False
        if isinstance(value, broker_connection_errors()):
            return True
        value = value.__cause__ or value.__context__
    return False


class BrokerAwayWarning(logging.Filter):
    """Celery's ERROR and CRITICAL lines that say only that the broker is away are warnings.

    A restarted Redis or RabbitMQ is something the processes ride out: the worker retries the
    connection ("Cannot connect to ... Trying again") and consumes again; a task that finished
    meanwhile could not acknowledge its message ("Couldn't ack"), which the broker gives again
    (the tasks are idempotent); beat could not send one run ("Message Error"), and the next
    comes as scheduled. An ERROR for each would page someone for a broker restart. A broker
    that stays away still shows: the retries go on being logged, and after
    `broker_connection_max_retries` the worker stops. Lines about anything else, and these
    lines with another cause, keep their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        starts = BROKER_AWAY_MESSAGES.get(record.name)
        if (record.levelno <= logging.WARNING or not starts
                or not str(record.msg).startswith(starts)):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        causes = [*args, record.exc_info[1] if record.exc_info else None]
        if not any(_broker_away(cause) for cause in causes):
            return True
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        # One line: the traceback of a refused or reset connection (and the stack of its loop
        # that Celery's scheduler adds) says nothing the exception does not.
        record.exc_info, record.exc_text = None, None
        if str(record.msg).startswith("Message Error:"):
            record.msg, record.args = "Message Error: %s", args[:1]
        return True


def configure(config: dict[str, Any]) -> None:
    """Django's LOGGING_CONFIG: the dictionary, and Python's warnings as log lines too (a
    warning printed as it is would be a line of another format)."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """Django's LOGGING: one console handler with the chosen format and the context filter."""
    formatter = {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {
        "()": f"{__name__}.TextFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter"},
                    "broker_away": {"()": f"{__name__}.BrokerAwayWarning"}},
        "formatters": {"line": formatter},
        "handlers": {
            # Standard error, as before: Celery's workers replace sys.stdout with a logger.
            "console": {"class": "logging.StreamHandler", "formatter": "line",
                        "filters": ["context", "broker_away"]},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # The SDK turns itself to DEBUG on import and may log signed data.
            "python-alipay-sdk": {"handlers": [], "level": "WARNING", "propagate": False},
            "django.db.backends": {"level": "INFO"},
        },
    }


class SocketClosedTwice(logging.Filter):
    """Drops gunicorn's "Error while closing socket [Errno 9] Bad file descriptor" at each
    worker's stop: uvicorn has already closed the listening socket the worker shares, and
    gunicorn closes it again. Nothing failed; an "Error" line at every stop would say so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Error while closing socket %s"
                    and "[Errno 9]" in str(record.args))


def gunicorn_config(*, log_format: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its own lines and the access log (uvicorn's, through
    gunicorn's handlers) in the same format as the application's."""
    config = logging_config(log_format=log_format, level="INFO")
    config["filters"]["socket_closed_twice"] = {"()": f"{__name__}.SocketClosedTwice"}
    logger = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return {**config, "loggers": {
        "gunicorn.error": {**logger, "filters": ["socket_closed_twice"]},
        "gunicorn.access": logger,
    }}


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestIdASGIMiddleware:
    """Every HTTP request of the ASGI application, the fast path's too, gets its request id.

    It must see the connection's own peer: it goes outside the forwarded headers' middleware,
    which replaces the peer with the client a proxy names.
    """

    def __init__(self, app: ASGIApp, *, trusted_proxies: TrustedProxies) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((value for name, value in scope.get("headers", ())
                     if name == b"x-request-id"), None)
        peer = scope.get("client")
        current = request_id_accept(
            sent, trusted=(peer[0] if peer else None) in self.trusted_proxies)
        header = (b"x-request-id", current.encode())

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = REQUEST_ID.set(current)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestIdMiddleware:
    """Django's side, for servers other than config.asgi (the WSGI handler, runserver): the same
    request id rules. Under config.asgi the ASGI middleware has set it already."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.trusted_proxies = TrustedProxies(settings.FORWARDED_ALLOW_IPS)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _request_id(self, request: Any) -> str:
        # The WSGI server and runserver give the connection's peer here.
        return request_id_accept(
            request.headers.get(HEADER),
            trusted=request.META.get("REMOTE_ADDR") in self.trusted_proxies)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        if REQUEST_ID.get() is not None:
            return self.get_response(request)
        current = self._request_id(request)
        token = REQUEST_ID.set(current)
        try:
            response = self.get_response(request)
        finally:
            REQUEST_ID.reset(token)
        response.headers.setdefault(HEADER, current)
        return response

    async def _acall(self, request: Any) -> Any:
        if REQUEST_ID.get() is not None:
            return await self.get_response(request)
        current = self._request_id(request)
        token = REQUEST_ID.set(current)
        try:
            response = await self.get_response(request)
        finally:
            REQUEST_ID.reset(token)
        response.headers.setdefault(HEADER, current)
        return response
