"""docker-compose.yml read as Compose reads it: YAML, then variables interpolated.

Docker cannot run in the test environment, so the tests interpolate the file themselves, by
the Compose specification's rules: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}`, `$VAR` and `$$`.
"""
import re
from typing import Any

import yaml

from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"

# Settings that have no safe default: compose must refuse to start without each of them.
REQUIRED = (
    "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "ALIPAY_APPID", "ALIPAY_SELLER_ID",
    "ALIPAY_RETURN_URL", "ALIPAY_NOTIFY_URL", "ALIPAY_KEYS_DIR", "POSTGRES_PASSWORD", "TLS_DIR",
)

# Placeholders for the required variables, as an operator's .env would give them.
PRODUCTION_VARIABLES = {
    "DJANGO_SECRET_KEY": "x" * 20 + "-a-production-secret-key-given-by-the-operator",
    "DJANGO_ALLOWED_HOSTS": "shop.example.com",
    "ALIPAY_APPID": "2021004100000000",
    "ALIPAY_SELLER_ID": "2088400000000000",
    "ALIPAY_RETURN_URL": "https://shop.example.com/pay_success.html",
    "ALIPAY_NOTIFY_URL": "https://shop.example.com/payment/alipay/notify/",
    "ALIPAY_KEYS_DIR": "/srv/shop/alipay-keys",
    "POSTGRES_PASSWORD": "a-database-password",
    "TLS_DIR": "/srv/shop/tls",
}

PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("-"):
            return arg if missing else str(current)
        if op is not None and op.endswith("?"):
            if missing:
                raise MissingVariable(name, arg)
            return str(current)
        return current or ""

    return PATTERN.sub(substitute, value)


def raw() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def resolved(variables: dict[str, str]) -> dict[str, Any]:
    return dict(interpolate(raw(), variables))


def service_environment(service: str, variables: dict[str, str]) -> dict[str, str]:
    """The environment a service's container gets; a variable listed without a value is
    passed on from `variables` when set there, as Compose does."""
    environment = resolved(variables)["services"][service].get("environment", {})
    result = {}
    for name, value in environment.items():
        if value is not None:
            result[name] = str(value)
        elif name in variables:
            result[name] = variables[name]
    return result
