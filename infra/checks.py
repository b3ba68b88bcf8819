"""Refuse to run a production deployment (DJANGO_ENV=production) with unsafe settings.

The checks are Django system checks at Error level: `manage.py check`, `migrate` and
`runserver` stop on them, and `checks_require()` runs every check when the web (config.asgi,
config.wsgi), the Celery worker and beat start, which `manage.py` does not cover.
"""
import logging
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register, run_checks
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

ENVIRONMENTS = ("development", "production")
SECRET_KEY_HINT = (
    "Set DJANGO_SECRET_KEY to a long random value, e.g. the output of "
    "python -c 'import secrets; print(secrets.token_urlsafe(50))'."
)


@register(Tags.security)
def production_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if settings.DJANGO_ENV not in ENVIRONMENTS:
        return [Error(
            f"DJANGO_ENV is {settings.DJANGO_ENV[:40]!r}: it must be one of "
            f"{', '.join(ENVIRONMENTS)}.",
            hint="Unset it for development; set DJANGO_ENV=production in production.",
            id="shop.E001",
        )]
    if not settings.PRODUCTION:
        return []
    return [*_secret_key_errors(), *_allowed_hosts_errors(), *_alipay_errors(), *_debug_errors()]


def _secret_key_errors() -> list[CheckMessage]:
    try:
        key = str(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        key = ""
    if not key:
        return [Error("DJANGO_SECRET_KEY is not set (DJANGO_ENV=production).",
                      hint=SECRET_KEY_HINT, id="shop.E002")]
    if key == settings.DEVELOPMENT_SECRET_KEY or key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return [Error("DJANGO_SECRET_KEY is the development key, which everyone knows "
                      "(DJANGO_ENV=production).", hint=SECRET_KEY_HINT, id="shop.E003")]
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return [Error(
            f"DJANGO_SECRET_KEY is too short or too simple: it needs at least "
            f"{SECRET_KEY_MIN_LENGTH} characters, {SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them "
            f"different (DJANGO_ENV=production).",
            hint=SECRET_KEY_HINT, id="shop.E004",
        )]
    return []


def _allowed_hosts_errors() -> list[CheckMessage]:
    hosts = list(settings.ALLOWED_HOSTS)
    if not hosts:
        return [Error("DJANGO_ALLOWED_HOSTS is empty (DJANGO_ENV=production).",
                      hint="Set it to the public host names, comma-separated: shop.example.com",
                      id="shop.E005")]
    if "*" in hosts:
        return [Error("DJANGO_ALLOWED_HOSTS contains '*', which accepts any Host header "
                      "(DJANGO_ENV=production).",
                      hint="List the public host names instead.", id="shop.E006")]
    return []


def _alipay_errors() -> list[CheckMessage]:
    if not settings.ALIPAY_SELLER_ID:
        return [Error("ALIPAY_SELLER_ID is empty, so payments to another seller would be "
                      "accepted (DJANGO_ENV=production).",
                      hint="Set it to your Alipay seller id (PID, 2088...).", id="shop.E007")]
    return []


def _debug_errors() -> list[CheckMessage]:
    if settings.DEBUG:
        return [Error("DJANGO_DEBUG is on: error pages would show the settings and every URL "
                      "(DJANGO_ENV=production).", hint="Unset DJANGO_DEBUG.", id="shop.E008")]
    return []


def checks_require() -> None:
    """Stop the process, naming each problem, when a system check reports an error.

    gunicorn and celery do not run Django's checks as `manage.py` does; their entry points
    call this once the apps are loaded.
    """
    errors = []
    for message in run_checks():
        if message.is_serious():
            errors.append(message)
        elif not message.is_silenced():
            logger.warning("%s", message)
    if errors:
        summary = f"start-up refused: {len(errors)} system check error(s)"
        raise SystemExit("\n".join([*(_line(message) for message in errors), summary]))


def _line(message: CheckMessage) -> str:
    line = f"error: ({message.id}) {message.msg}"
    return f"{line}\n  hint: {message.hint}" if message.hint else line
