"""Settings for the shop and its Alipay payments.

This is the only module that reads the environment. Every variable, with its default, is
listed in README.md.
"""
import ipaddress
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from infra.envvars import env_renamed
from infra.logs import log_format, logging_config
from infra.proxies import PROXIES_DEFAULT, proxies_parse

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


# development (the default: `make run`, the tests) or production, where infra/checks.py
# refuses to start without the settings below; any other value is refused too, and meanwhile
# gets production's protections.
DJANGO_ENV = env.str("DJANGO_ENV", default="development")
PRODUCTION = DJANGO_ENV != "development"
# Known to everyone who reads this file: development only, refused in production.
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key-change-me"

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="" if PRODUCTION else DEVELOPMENT_SECRET_KEY)
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "infra",
    "shop",
    "payment",
    "workers",
    "backoffice",
]

MIDDLEWARE = [
    # First: every line logged while a request is handled carries its id.
    "infra.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out sign-in form into the lockout page (shop.signin.lockout_page).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
# A connection the server ended (restart, failover, idle timeout, pg_terminate_backend) is
# found out before use and replaced: a persistent connection is checked at its first use in
# each request or task (the pooled web's: below).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share the file: wait for locks instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL;"
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=20)
# How long a request waits for a pooled connection (then: 503 on the intake, 500 elsewhere).
DATABASE_POOL_TIMEOUT_SECONDS = env.float("DATABASE_POOL_TIMEOUT_SECONDS", default=10.0)
if env.bool("DATABASE_POOL", default=False) and (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
):
    # The ASGI server runs each request's database work on a short-lived thread: persistent
    # per-thread connections would be opened per request, so it borrows from a pool instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Django's backend whose pool checks each connection it lends, and all its idle ones once
    # one has failed (infra/postgresql): psycopg_pool's own check (CONN_HEALTH_CHECKS) would
    # wait seconds between dead connections.
    DATABASES["default"]["ENGINE"] = "infra.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2, "max_size": DATABASE_POOL_SIZE, "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "shop.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": [
        "infra.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "shop.signin.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "shop.apis.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Shop payments API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the installed sidecar package, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "PaymentEventSourceEnum": "payment.models.PaymentEvent.Source",
        "PaymentEventStateEnum": "payment.models.PaymentEvent.State",
        "RefundStateEnum": "payment.models.Refund.State",
        "RefundSourceEnum": "payment.models.Refund.Source",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "payment.api.schema.intake_paths",
    ],
}

# Sign-in protection and API tokens (shop/signin.py) -----------------------------------------
# Failed sign-ins are counted in the database per account and per client address; at either
# limit every sign-in of that account or from that address, a correct one too, is answered 429
# until no failure is younger than the cool-off.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURES_PER_ACCOUNT", default=5)
LOGIN_FAILURES_PER_CLIENT = env.int("LOGIN_FAILURES_PER_CLIENT", default=20)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("LOGIN_LOCKOUT_SECONDS", default=15 * 60))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# One count per account however its name is spelled ("VICTIM", "ｖｉｃｔｉｍ": "victim").
AXES_USERNAME_CALLABLE = "shop.signin.account_key"
AXES_HANDLER = "shop.signin.FailedSignInHandler"
AXES_LOCKOUT_CALLABLE = "shop.signin.lockout_page"
# A success must not clear the failures its address made on other accounts.
AXES_RESET_ON_SUCCESS = False
# Failures are kept for the cool-off only; successful sign-ins are not logged row by row.
AXES_DISABLE_ACCESS_LOG = True
# No "AXES: BEGIN ..." line from every process and every manage.py command; lockouts are
# still logged by its handler (shop.signin.FailedSignInHandler).
AXES_VERBOSE = False
# Each sign-in at POST /authorizations/ gets its own token, stored as a digest.
REST_KNOX = {
    "TOKEN_TTL": timedelta(seconds=env.int("API_TOKEN_TTL", default=7 * 24 * 3600)),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}
# --------------------------------------------------------------------------------------------

# Settings read with `env_renamed` (here and below) were renamed: the new environment variable
# is read; the old one, when it alone is set, is used for one more release with a deprecation
# warning (infra/envvars.py).

# Where the Procfile's web and sandbox listen (WEB_BIND, SANDBOX_HOST, SANDBOX_PORT): the
# defaults of the shop's own URL, Alipay's return and notification URLs and the gateway follow
# them, so that moving a port moves every URL that names it. Production sets the URLs.
def _local_origin(host: str, port: str) -> str:
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
    return f"http://{host}:{port}"


WEB_BIND = env.str("WEB_BIND", default="127.0.0.1:8000")
SHOP_URL = env.str("SHOP_URL", default=_local_origin(*WEB_BIND.rsplit(":", 1))).rstrip("/")
SANDBOX_URL = env.str("SANDBOX_URL", default=_local_origin(
    env.str("SANDBOX_HOST", default="127.0.0.1"), env.str("SANDBOX_PORT", default="8090")))

# Alipay
ALIPAY_APPID = env.str("ALIPAY_APPID", default="2021000000000001")
ALIPAY_GATEWAY = env.str("ALIPAY_GATEWAY", default=f"{SANDBOX_URL}/gateway.do")
ALIPAY_APP_PRIVATE_KEY_PATH = Path(
    env.str("ALIPAY_APP_PRIVATE_KEY_PATH", default=str(BASE_DIR / "keys" / "app_private_key.pem"))
)
ALIPAY_PUBLIC_KEY_PATH = Path(
    env.str("ALIPAY_PUBLIC_KEY_PATH", default=str(BASE_DIR / "keys" / "alipay_public_key.pem"))
)
# Certificate mode (公钥证书) when these are set (all three): the app's certificate, Alipay's
# (alipayCertPublicKey_RSA2.crt) and Alipay's root file; ALIPAY_PUBLIC_KEY_PATH is then unused.
# Key mode otherwise: ALIPAY_PUBLIC_KEY_PATH may hold two keys while they are switched.
ALIPAY_APP_CERT_PATH = (Path(env.str("ALIPAY_APP_CERT_PATH"))
                        if env.str("ALIPAY_APP_CERT_PATH", default="") else None)
ALIPAY_CERT_PATH = (Path(env.str("ALIPAY_CERT_PATH"))
                    if env.str("ALIPAY_CERT_PATH", default="") else None)
ALIPAY_ROOT_CERT_PATH = (Path(env.str("ALIPAY_ROOT_CERT_PATH"))
                         if env.str("ALIPAY_ROOT_CERT_PATH", default="") else None)
# After a return or notification no trusted key verified: the keys are looked at again (key
# file changed? Alipay's certificate renewed?) at most this often per process.
ALIPAY_KEYS_REFRESH_SECONDS = env.float("ALIPAY_KEYS_REFRESH_SECONDS", default=5.0)
ALIPAY_SELLER_ID = env.str("ALIPAY_SELLER_ID", default="")
ALIPAY_RETURN_URL = env.str("ALIPAY_RETURN_URL", default=f"{SHOP_URL}/pay_success.html")
ALIPAY_NOTIFY_URL = env.str("ALIPAY_NOTIFY_URL", default=f"{SHOP_URL}/payment/alipay/notify/")
ALIPAY_TIMEOUT_SECONDS = env_renamed(env.float, "ALIPAY_TIMEOUT_SECONDS", old="ALIPAY_TIMEOUT",
                                      default=10.0)
ALIPAY_SUBJECT_PREFIX = env.str("ALIPAY_SUBJECT_PREFIX", default="Shop order ")

# Payment processing
RETURN_WAIT_SECONDS = env_renamed(env.float, "RETURN_WAIT_SECONDS", old="PAYMENT_STATUS_WAIT",
                                  default=3.0)
# The one retry policy (payment/processing/retry.py) is built from these.
PAYMENT_EVENT_MAX_ATTEMPTS = env.int("PAYMENT_EVENT_MAX_ATTEMPTS", default=12)
PAYMENT_RETRY_BACKOFF = env.float("PAYMENT_RETRY_BACKOFF", default=1.0)
PAYMENT_RETRY_BACKOFF_MAX = env.float("PAYMENT_RETRY_BACKOFF_MAX", default=300.0)
PAYMENT_RETURN_CONFIRM_ATTEMPTS = env.int("PAYMENT_RETURN_CONFIRM_ATTEMPTS", default=3)
PAYMENT_CLAIM_LEASE_SECONDS = env_renamed(env.float, "PAYMENT_CLAIM_LEASE_SECONDS",
                                          old="PAYMENT_CLAIM_LEASE", default=60.0)
PAYMENT_BATCH_SIZE = env.int("PAYMENT_BATCH_SIZE", default=500)
PAYMENT_SWEEP_INTERVAL_SECONDS = env_renamed(env.float, "PAYMENT_SWEEP_INTERVAL_SECONDS",
                                             old="PAYMENT_SWEEP_INTERVAL", default=60.0)
RECONCILE_AFTER_SECONDS = env_renamed(env.float, "RECONCILE_AFTER_SECONDS",
                                      old="RECONCILE_AFTER", default=120.0)
RECONCILE_INTERVAL_SECONDS = env_renamed(env.float, "RECONCILE_INTERVAL_SECONDS",
                                         old="RECONCILE_INTERVAL", default=60.0)
RECONCILE_BATCH_SIZE = env.int("RECONCILE_BATCH_SIZE", default=200)
# A batch of checks (reconciliation's, expiry's) holds its orders this long; a batch lost with
# its worker or its message is done again by a later run after it.
RECONCILE_CLAIM_LEASE_SECONDS = env.float("RECONCILE_CLAIM_LEASE_SECONDS", default=300.0)
# Gateway threads per process (payment/gateway/pool.py): every batch of concurrent Alipay calls
# (reconciliation, bills, returns) runs on them. Formerly RECONCILE_CONCURRENCY.
GATEWAY_CONCURRENCY = env_renamed(env.int, "GATEWAY_CONCURRENCY", old="RECONCILE_CONCURRENCY",
                                  default=64)
# Per-client throttles of the payment endpoints (payment/intake/throttle.py), `limits` notation.
RETURN_RATE = env_renamed(env.str, "RETURN_RATE", old="PAYMENT_STATUS_RATE",
                          default="120/minute")
PAYMENT_REFUSED_RATE = env.str("PAYMENT_REFUSED_RATE", default="30/minute")
# Intake requests a web process works on at once (payment/intake/admission.py): past it a new
# one waits for a place at most INTAKE_QUEUE_SECONDS, then gets 503 with Retry-After. A return
# waiting for the workers does not count. 0: no limit.
INTAKE_MAX_ACTIVE = env.int("INTAKE_MAX_ACTIVE", default=16)
INTAKE_QUEUE_SECONDS = env.float("INTAKE_QUEUE_SECONDS", default=0.5)
INTAKE_RETRY_AFTER_SECONDS = env.int("INTAKE_RETRY_AFTER_SECONDS", default=1)
# A process whose event loop runs this late (seconds; 0: not watched) refuses at once what
# cannot start at once, instead of queueing it.
INTAKE_MAX_LAG_SECONDS = env.float("INTAKE_MAX_LAG_SECONDS", default=0.1)
# Returns a web process lets wait for the workers at once; past it a new one gets 503. 0: no limit.
INTAKE_MAX_WAITING = env.int("INTAKE_MAX_WAITING", default=128)
# Retention (payment/reconciliation/retention.py): settled events and refused-request counts
# are deleted after these many days; events waiting or dead are kept until an operator settles them.
PAYMENT_EVENT_RETENTION_DAYS = env.int("PAYMENT_EVENT_RETENTION_DAYS", default=400)
PAYMENT_REFUSED_RETENTION_DAYS = env.int("PAYMENT_REFUSED_RETENTION_DAYS", default=30)
PAYMENT_RETENTION_INTERVAL_SECONDS = env_renamed(
    env.float, "PAYMENT_RETENTION_INTERVAL_SECONDS", old="PAYMENT_RETENTION_INTERVAL",
    default=3600.0,
)
# Daily reconciliation against Alipay's trade bill (payment/reconciliation/bills.py): bills are
# T+1, ready about 09:00-10:00 Beijing time; each run redoes the last BILL_RECONCILE_DAYS days.
BILL_RECONCILE_HOUR = env.int("BILL_RECONCILE_HOUR", default=10)
BILL_RECONCILE_MINUTE = env.int("BILL_RECONCILE_MINUTE", default=30)
BILL_RECONCILE_DAYS = env.int("BILL_RECONCILE_DAYS", default=3)
BILL_ENTRY_RETENTION_DAYS = env.int("BILL_ENTRY_RETENTION_DAYS", default=90)
# The bill's download and file are bounded: the URL comes from Alipay's signed answer, yet a
# misconfigured or hostile gateway must not make a worker fetch anything, anyhow long, or
# unpack a zip bomb. Hosts: Alipay's bill host (its URLs say http://, fetched as https:// in
# production); outside production also Alipay's sandbox and the configured local sandbox
# (SANDBOX_URL, and ALIPAY_GATEWAY's host: `sandbox` in the compose dev profile).
_BILL_HOSTS = ["dwbillcenter.alipay.com"] + ([] if PRODUCTION else [
    "dwbillcenter.alipaydev.com", urlsplit(SANDBOX_URL).hostname,
    urlsplit(ALIPAY_GATEWAY).hostname])
BILL_DOWNLOAD_HOSTS = env.list("BILL_DOWNLOAD_HOSTS",
                               default=[host for host in dict.fromkeys(_BILL_HOSTS) if host])
BILL_DOWNLOAD_MAX_BYTES = env.int("BILL_DOWNLOAD_MAX_BYTES", default=64 * 1024 * 1024)
BILL_DOWNLOAD_SECONDS = env.float("BILL_DOWNLOAD_SECONDS", default=30.0)
BILL_MAX_UNCOMPRESSED_BYTES = env.int("BILL_MAX_UNCOMPRESSED_BYTES", default=512 * 1024 * 1024)
BILL_MAX_LINE_CHARS = env.int("BILL_MAX_LINE_CHARS", default=16 * 1024)
ORDER_PAY_TIMEOUT_SECONDS = env_renamed(env.float, "ORDER_PAY_TIMEOUT_SECONDS",
                                        old="ORDER_PAY_TIMEOUT", default=30 * 60.0)
ORDER_EXPIRE_INTERVAL_SECONDS = env_renamed(env.float, "ORDER_EXPIRE_INTERVAL_SECONDS",
                                            old="ORDER_EXPIRE_INTERVAL", default=60.0)

# Refunds (payment/refunds/ledger.py) ------------------------------------------------------
# Seconds between Alipay accepting a refund (or not answering) and asking it with
# alipay.trade.fastpay.refund.query whether the refund is done; Alipay advises 10 s at least.
REFUND_CONFIRM_DELAY_SECONDS = env_renamed(env.float, "REFUND_CONFIRM_DELAY_SECONDS",
                                           old="REFUND_CONFIRM_DELAY", default=10.0)
# --------------------------------------------------------------------------------------------

# Unpaid orders one account may hold at once (each holds stock until paid or expired);
# 0: no cap.
ORDER_MAX_UNPAID = env.int("ORDER_MAX_UNPAID", default=5)

# Celery
# The broker: its URL alone chooses it (README.md, "The broker"). redis:// in production and
# the tests, amqp:// for RabbitMQ, the server-less filesystem:// for `make run`.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
BROKER_KIND = {
    "amqp": "rabbitmq", "amqps": "rabbitmq", "pyamqp": "rabbitmq",
    "redis": "redis", "rediss": "redis", "sentinel": "redis",
}.get(CELERY_BROKER_URL.partition("://")[0].lower(), "filesystem")
# Redis shared by the payment intake's processes: workers wake waiting requests through it,
# and the intake's throttles count in it. Without Redis the web polls the database from the
# event loop and throttles count per process. With RabbitMQ as the broker it is a Redis of
# its own, or empty for those fallbacks.
PAYMENT_REDIS_URL = env.str(
    "PAYMENT_REDIS_URL",
    default=CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "",
)
CELERY_BROKER_FOLDER = Path(
    env.str("CELERY_BROKER_FOLDER", default=str(BASE_DIR / "var" / "broker"))
)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=90)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# Celery's Django fix-up closes the database connection around every task unless this is
# set; a new PostgreSQL connection cost more CPU than the work of a whole event.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Broker and shutdown (workers/celery.py declares the queues) ---------------------------------
# Redis: a message a worker took and did not acknowledge is given to another worker after the
# visibility timeout. Above the longest countdown (PAYMENT_RETRY_BACKOFF_MAX,
# REFUND_CONFIRM_DELAY_SECONDS), so that a waiting retry is not delivered twice; Celery reads
# it in three places, which must agree.
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=2 * 3600)
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object]
if BROKER_KIND == "filesystem":
    # Ctrl-C on `make run` gives the worker 5 s (honcho's grace): it must not sleep through
    # Celery's blocking loop (workers/filesystem.py) or its timer thread, 1 s each by default.
    CELERY_BROKER_TRANSPORT = "workers.filesystem:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_FOLDER / "queue"),
        "data_folder_out": str(CELERY_BROKER_FOLDER / "queue"),
        "control_folder": str(CELERY_BROKER_FOLDER / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    CELERY_WORKER_TIMER_PRECISION = 0.2
elif BROKER_KIND == "rabbitmq":
    # Publisher confirms: a publish returns once RabbitMQ has the message (in a quorum
    # queue: on a majority of its nodes), and raises when it refuses it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
    # Quorum queues (workers/celery.py) take no global prefetch, and countdowns wait in
    # RabbitMQ's delay queues rather than in a worker's memory.
    CELERY_WORKER_DETECT_QUORUM_QUEUES = True
    CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = "topic"
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
# A deploy stops a worker with SIGTERM; started with REMAP_SIGTERM=SIGQUIT (the worker command
# of the Procfile and docker-compose.yml) that is a soft shutdown: running tasks get this many
# seconds to finish, then they are stopped and their messages go back to the queue at once
# (Redis too, instead of after the visibility timeout), to be done by another worker. Keep it
# below the time the process manager waits before SIGKILL (docker: 10 s unless
# stop_grace_period says more).
# The filesystem broker cannot hand a message back: `make run` stops at once.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float(
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=0.0 if BROKER_KIND == "filesystem" else 8.0
)
# Only with tasks running: on idle Celery sleeps out the whole timeout, past honcho's 5 s.
# Countdowns a worker holds (Redis) need no wait: they are unacknowledged messages, which the
# worker puts back in their queues when it closes its broker connection, idle or not (a
# killed worker's come back after the visibility timeout, wait or no wait). On RabbitMQ they
# wait in its delay queues, never in a worker.
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = False
# A request that enqueues must not hang on a broker that is away: the event is stored and
# the sweeper sends it later.
CELERY_BROKER_CONNECTION_TIMEOUT = 3
# ---------------------------------------------------------------------------------------------
CELERY_BEAT_SCHEDULE = {
    "sweep-payment-events": {
        "task": "payment.tasks.events_sweep_task",
        "schedule": PAYMENT_SWEEP_INTERVAL_SECONDS,
    },
    "reconcile-payments": {
        "task": "payment.tasks.reconcile_dispatch_task",
        "schedule": RECONCILE_INTERVAL_SECONDS,
    },
    "prune-payment-records": {
        "task": "payment.tasks.records_prune_task",
        "schedule": PAYMENT_RETENTION_INTERVAL_SECONDS,
    },
    "reconcile-bills": {
        "task": "payment.tasks.bills_reconcile_dispatch_task",
        # CELERY_TIMEZONE is the shop's, Asia/Shanghai: Alipay's day.
        "schedule": crontab(hour=BILL_RECONCILE_HOUR, minute=BILL_RECONCILE_MINUTE),
    },
    "expire-orders": {
        "task": "payment.tasks.orders_expire_dispatch_task",
        "schedule": ORDER_EXPIRE_INTERVAL_SECONDS,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(BASE_DIR / "var" / "celerybeat-schedule")
)

# Beat on several hosts (docs/scaling.md) ------------------------------------------------------
# With Redis, every beat runs celery-redbeat's scheduler: the schedule and each job's last run
# are kept in Redis, and only the beat holding the lock sends; the others wait for the lock and
# take over within CELERY_BEAT_LOCK_TIMEOUT + CELERY_BEAT_MAX_LOOP_INTERVAL of its holder's
# death, from the last run it recorded. Without Redis (`make run`): Celery's own scheduler,
# its state in CELERY_BEAT_SCHEDULE_FILENAME, and exactly one beat.
CELERY_BEAT_REDIS_URL = env.str("CELERY_BEAT_REDIS_URL", default=PAYMENT_REDIS_URL)
CELERY_BEAT_SCHEDULER = env.str(
    "CELERY_BEAT_SCHEDULER",
    default=(
        "workers.beat:LockedScheduler" if CELERY_BEAT_REDIS_URL
        else "celery.beat:PersistentScheduler"
    ),
)
# Longest sleep between two passes: the lock is renewed on every pass, and a beat waiting for
# the lock asks again after this long.
CELERY_BEAT_MAX_LOOP_INTERVAL = env.float("CELERY_BEAT_MAX_LOOP_INTERVAL", default=5.0)
CELERY_REDBEAT_REDIS_URL = CELERY_BEAT_REDIS_URL
CELERY_REDBEAT_REDIS_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 10}
CELERY_REDBEAT_KEY_PREFIX = env.str("CELERY_BEAT_KEY_PREFIX", default="shop-beat:")
CELERY_REDBEAT_LOCK_TIMEOUT = env.int("CELERY_BEAT_LOCK_TIMEOUT", default=30)
# ----------------------------------------------------------------------------------------------

# Logs and metrics (infra/logs.py, infra/metrics.py, payment/metrics.py) ------------------------
# One JSON object per line in production (text in development), every line with the request
# id; LOG_FORMAT (json or text) overrides the choice.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
try:
    LOG_FORMAT = log_format(configured=env.str("LOG_FORMAT", default=""), django_env=DJANGO_ENV)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
LOGGING_CONFIG = "infra.logs.configure"
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
# Who may read GET /metrics (the web) and a worker's endpoint: clients in these networks (as
# the web sees them: behind the proxy, the forwarded address), or anyone sending
# `Authorization: Bearer <METRICS_TOKEN>` when a token is set.
METRICS_ALLOWED_NETWORKS = [
    network.strip() for network in
    env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"]) if network.strip()
]
try:
    for _network in METRICS_ALLOWED_NETWORKS:
        ipaddress.ip_network(_network, strict=False)
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from None
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# The reverse proxies (gunicorn's setting, read here too; the Procfile's web hands gunicorn's
# value over, config/serving.py): addresses or networks whose X-Forwarded-For/-Proto and
# X-Request-ID are believed, or `*` for any peer.
try:
    FORWARDED_ALLOW_IPS = proxies_parse(env.list("FORWARDED_ALLOW_IPS",
                                                 default=list(PROXIES_DEFAULT)))
except ValueError as exc:
    raise ImproperlyConfigured(f"FORWARDED_ALLOW_IPS: {exc}") from None
# A worker's main process serves its processes' metrics on this port (0: it does not).
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
WORKER_METRICS_ADDRESS = env.str("WORKER_METRICS_ADDRESS", default="127.0.0.1")
# Where web and worker keep their processes' metric files (a fresh folder each per start).
METRICS_DIR = env.str("METRICS_DIR", default="")
# --------------------------------------------------------------------------------------------

# Deployment: request size, HTTPS and browser protections. In production TLS ends at the
# reverse proxy (deploy/nginx.conf), which sets X-Forwarded-Proto; `manage.py check --deploy`
# is clean with the production profile of docker-compose.yml.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)
# The web's own bounds (config/serving.py), as the proxy's, for when it is reached without one:
# a header section's bytes (request line included) and fields, then 431; how long a header
# section and a body may take to arrive, then 408. The size is above what the proxy passes
# (client_header_buffer_size + large_client_header_buffers, plus the headers it adds).
HEADERS_MAX_SIZE = env.int("HEADERS_MAX_SIZE", default=80 * 1024)
HEADERS_MAX_COUNT = env.int("HEADERS_MAX_COUNT", default=100)
HEADERS_TIMEOUT_SECONDS = env.float("HEADERS_TIMEOUT_SECONDS", default=10.0)
BODY_TIMEOUT_SECONDS = env.float("BODY_TIMEOUT_SECONDS", default=10.0)
for _name in ("HEADERS_MAX_SIZE", "HEADERS_MAX_COUNT", "HEADERS_TIMEOUT_SECONDS",
              "BODY_TIMEOUT_SECONDS"):
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name} must be above 0")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
# Only the proxy reaches the web in production; without one a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
SECURE_SSL_REDIRECT = PRODUCTION and env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000) if PRODUCTION else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION and env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True
)
SECURE_HSTS_PRELOAD = PRODUCTION and env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
# Development serves static files from the apps' folders, collected or not; production from
# STATIC_ROOT, which the image fills with collectstatic.
WHITENOISE_USE_FINDERS = not PRODUCTION
