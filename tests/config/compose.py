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


# -- .dockerignore, read as Docker reads it (moby's patternmatcher) -----------------------------

DOCKERIGNORE = ROOT / ".dockerignore"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as moby compiles it: `*` and `?` within one folder, `**` across
    any number of folders (none included)."""
    regex, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return re.compile(regex + "$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, pattern) for each rule, in order."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def left_out_of_the_image(path: str) -> bool:
    """Whether `COPY . .` leaves `path` (relative to the build context) out: the last rule that
    matches it or one of its folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    left_out = False
    for exception, regex in dockerignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            left_out = not exception
    return left_out
