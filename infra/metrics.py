"""Prometheus metrics: where they are kept across processes and how they are served.

Multiprocess mode. The web is gunicorn with several uvicorn worker processes and a scrape
reaches one of them; a worker is Celery's main process with prefork children doing the work.
Each process writes its samples to memory-mapped files in one directory per server (made
fresh when the server starts, so counters start from zero with it, as Prometheus expects of a
restart), and the scrape of that server adds up the files of all its processes, dead ones
included: nothing counted is lost when gunicorn or Celery replaces a child. A port per
process would need Prometheus to know every child's port, which changes as they are
replaced.

- The web: `GET /metrics` (config/asgi.py routes it here, ahead of Django: no host check, no
  HTTPS redirect, no throttle) serves the web's processes, plus gauges read from the database
  and the broker at scrape time (events waiting and dead, refunds by state, queue depth).
- A worker: its main process serves its own processes' metrics on WORKER_METRICS_PORT.

Both answer only clients in METRICS_ALLOWED_NETWORKS, or with `Authorization: Bearer
<METRICS_TOKEN>`; anyone else gets 403.
"""
import hmac
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from asgiref.sync import sync_to_async
from celery import current_app
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger(__name__)

PATH = "/metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set for a server's processes to the directory it made, so that it removes only its own.
OWNER_ENV = "SHOP_METRICS_DIR_OWNER"


# -- the directory of a server's processes ----------------------------------------------------

def multiprocess_dir_create(kind: str, *, base: str = "") -> Path:
    """A fresh directory for the samples of this server's processes (gunicorn's master, Celery
    worker's main process), set in the environment its children inherit.

    Each server gets its own, so that a web and a worker on one host (the Procfile), or two
    workers, never add up or wipe each other's files.
    """
    parent = Path(base) if base else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    _stale_remove(parent, kind)
    path = Path(tempfile.mkdtemp(prefix=f"shop-metrics-{kind}-{os.getpid()}-", dir=parent))
    os.environ[MULTIPROC_ENV] = str(path)
    os.environ[OWNER_ENV] = str(os.getpid())
    return path


def _stale_remove(parent: Path, kind: str) -> None:
    """Folders a server of this kind left when it was killed: its process is gone, or it had
    this process's id (a container restarted, its server process 1 again)."""
    for path in parent.glob(f"shop-metrics-{kind}-*-*"):
        try:
            pid = int(path.name.split("-")[3])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def multiprocess_dir() -> Path | None:
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def multiprocess_dir_remove() -> None:
    """At the server's clean exit; only by the process that made it."""
    path = multiprocess_dir()
    if path is not None and os.environ.get(OWNER_ENV) == str(os.getpid()):
        shutil.rmtree(path, ignore_errors=True)


def process_dead(pid: int) -> None:
    """A child process has exited: its live gauges go; its counters stay in the sums."""
    path = multiprocess_dir()
    if path is not None:
        try:
            multiprocess.mark_process_dead(pid, str(path))
        except OSError:
            pass  # the folder went with the server's exit (a worker that failed to boot)


# -- who may scrape ---------------------------------------------------------------------------

def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.METRICS_ALLOWED_NETWORKS]


def scrape_allowed(*, client: str | None, authorization: str | None) -> bool:
    """From an allowed network, or with the bearer token when one is set."""
    token = settings.METRICS_TOKEN
    if token and authorization:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode()):
            return True
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in network for network in _networks())


# -- what a scrape shows ----------------------------------------------------------------------

def registry(*extra: Collector) -> CollectorRegistry:
    """This server's samples: every process's files in multiprocess mode, else this process's."""
    path = multiprocess_dir()
    combined = CollectorRegistry()
    if path is None:
        combined.register(_Forward(REGISTRY))
    else:
        multiprocess.MultiProcessCollector(combined, path=str(path))
    for collector in extra:
        combined.register(collector)
    return combined


class _Forward(Collector):
    """The default registry's metrics, inside a registry of a scrape's own."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        return self.source.collect()


ScrapeSource = Callable[[], Iterable[Metric]]
# Gauges a domain app reads at scrape time, by the name `shop_metrics_source_up` reports them
# under; registered from an AppConfig.ready() (payment/apps.py: the ledger, from the database).
_scrape_sources: dict[str, ScrapeSource] = {}


def scrape_source_register(name: str, source: ScrapeSource) -> None:
    """Read `source` at every scrape of the web; registering a name again replaces it."""
    _scrape_sources[name] = source


class ScrapeTimeCollector(Collector):
    """Gauges read when the web is scraped: the registered sources (scrape_source_register),
    and the messages waiting in each Celery queue (Redis brokers: LLEN; other brokers are
    skipped). A source that cannot be read is reported down, never a failed scrape.
    """

    # kombu's Redis transport keeps one list per priority step: name, name\x06\x163, ...
    PRIORITY_SEPARATOR = "\x06\x16"
    PRIORITY_STEPS = (0, 3, 6, 9)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("shop_metrics_source_up",
                               "1 when a scrape-time source could be read, else 0",
                               labels=["source"])
        families: list[Metric] = []
        for name, source in sorted(_scrape_sources.items()):
            try:
                families.extend(source())
                up.add_metric([name], 1)
            except Exception as exc:  # noqa: BLE001  (any driver error: report it down)
                logger.warning("metrics: %s gauges not read error=%s", name,
                               type(exc).__name__)
                up.add_metric([name], 0)
        url = str(settings.CELERY_BROKER_URL)
        if url.startswith(("redis://", "rediss://")):
            try:
                depths = self._depths(url)
            except Exception as exc:  # noqa: BLE001  (redis-py's errors vary)
                logger.warning("metrics: queue depth not read error=%s", type(exc).__name__)
                up.add_metric(["broker"], 0)
            else:
                up.add_metric(["broker"], 1)
                gauge = GaugeMetricFamily("shop_celery_queue_messages",
                                          "Messages waiting in the Celery queue",
                                          labels=["queue"])
                for queue, depth in depths.items():
                    gauge.add_metric([queue], depth)
                families.append(gauge)
        yield up
        yield from families

    def _depths(self, url: str) -> dict[str, int]:
        import redis

        # The process's Celery app (workers/celery.py, loaded with the installed apps).
        names = [queue.name for queue in current_app.conf.task_queues or ()]
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    for step in self.PRIORITY_STEPS:
                        pipe.llen(name if step == 0 else f"{name}{self.PRIORITY_SEPARATOR}{step}")
                lengths = pipe.execute()
        finally:
            client.close()
        steps = len(self.PRIORITY_STEPS)
        return {name: int(sum(lengths[i * steps:(i + 1) * steps]))
                for i, name in enumerate(names)}


def web_exposition() -> bytes:
    """What the web's /metrics shows (runs on a thread: the gauges read the database)."""
    from django.db import close_old_connections, connection

    close_old_connections()
    try:
        return generate_latest(registry(ScrapeTimeCollector()))
    finally:
        connection.close()  # back to the pool: this thread is not a request's


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The web's GET /metrics, a plain ASGI app."""
    headers = dict(scope.get("headers", ()))
    client = scope["client"][0] if scope.get("client") else None
    authorization = headers.get(b"authorization", b"").decode("latin-1") or None
    if scope["method"] not in ("GET", "HEAD"):
        await _respond(send, 405, b"Method Not Allowed\n", ((b"allow", b"GET, HEAD"),))
    elif not scrape_allowed(client=client, authorization=authorization):
        await _respond(send, 403, b"Forbidden\n")
    else:
        body = await sync_to_async(web_exposition, thread_sensitive=False)()
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body,
                       content_type=CONTENT_TYPE_LATEST.encode())
    # The request body, if any, is not read: /metrics takes none.


async def _respond(send: Any, status: int, body: bytes,
                   headers: tuple[tuple[bytes, bytes], ...] = (),
                   content_type: bytes = b"text/plain; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})


# -- a worker's endpoint ----------------------------------------------------------------------

# Connections served at once; more are closed as they come (Prometheus scrapes one at a time).
WORKER_METRICS_MAX_CONNECTIONS = 8


class _WorkerMetricsHandler(BaseHTTPRequestHandler):
    server_version = "shop-worker-metrics"

    def setup(self) -> None:
        # A client that sends nothing for this long is closed (the socket's time-out).
        self.request.settimeout(cast(_Server, self.server).request_timeout)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, b"Not Found\n")
        elif not scrape_allowed(client=self.client_address[0],
                                authorization=self.headers.get("Authorization")):
            self._answer(403, b"Forbidden\n")
        else:
            self._answer(200, generate_latest(registry()), CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes,
                content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes are not logged."""


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most WORKER_METRICS_MAX_CONNECTIONS of them, each closed
    when its client is silent for `request_timeout` seconds."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: socketserver's 5 drops connections in a burst

    def __init__(self, address: tuple[str, int], *, request_timeout: float) -> None:
        super().__init__(address, _WorkerMetricsHandler)
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(WORKER_METRICS_MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


_worker_server: _Server | None = None


def worker_server_start(*, address: str, port: int) -> _Server | None:
    """Serve this worker's metrics from its main process; None (logged) when the port is taken:
    the worker works on without its endpoint. A client has HEADERS_TIMEOUT_SECONDS between two
    reads of its request, as the web gives it for its whole header section."""
    global _worker_server
    try:
        server = _Server((address, port), request_timeout=settings.HEADERS_TIMEOUT_SECONDS)
    except OSError as exc:
        logger.warning("worker metrics not served on %s:%s: %s", address, port, exc.strerror)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _worker_server = server
    logger.info("worker metrics on http://%s:%s%s", address, port, PATH)
    return server


def worker_server_stop() -> None:
    global _worker_server
    if _worker_server is not None:
        _worker_server.shutdown()
        _worker_server.server_close()
        _worker_server = None
