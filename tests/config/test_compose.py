"""docker-compose.yml and the Dockerfile: valid Compose, the very commands of the Procfile, a
production profile with no known credentials behind a reverse proxy, a development profile.

Docker cannot run in the test environment; the file is checked against the Compose
specification's JSON schema (tests/config/fixtures/compose-spec.json, as shipped in the
docker-compose 1.29.2 package, Apache-2.0) and for the properties the service relies on.
`docker compose config` is run too where the Compose plugin is installed.
"""
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.config.compose import (
    PRODUCTION_VARIABLES,
    REQUIRED,
    MissingVariable,
    left_out_of_the_image,
    resolved,
    service_environment,
)
from tests.support import ROOT, SELLER_ID

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "fixtures" / "compose-spec.json"
INFRA = {"postgres", "redis", "proxy"}
PROCFILE_SERVICES = {"web", "worker", "beat", "sandbox"}
DEV_SERVICES = {"sandbox", "devkeys", "seed"}
PRODUCTION_SERVICES = {"postgres", "redis", "prepare", "web", "worker", "beat", "proxy"}
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# What the containers bind instead of the Procfile's loopback defaults.
CONTAINER_VALUES = {"WEB_BIND": "0.0.0.0:8000", "SANDBOX_HOST": "0.0.0.0", "SANDBOX_PORT": "8090"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _python_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if "build" in spec}


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def _in_container(command: str) -> str:
    def value(match: re.Match[str]) -> str:
        return CONTAINER_VALUES.get(match.group(1), match.group(0))

    return re.sub(r"\$\{(\w+):-[^}]*\}", value, command).strip()


def _dev_variables() -> dict[str, str]:
    lines = (ROOT / "deploy" / "dev.env").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    validator.validate(compose)
    validator.validate(resolved(PRODUCTION_VARIABLES))
    validator.validate(resolved(_dev_variables()))


def test_python_services_share_one_image_built_from_the_dockerfile(services: dict) -> None:
    python = _python_services(services)
    assert set(python) == PROCFILE_SERVICES | {"prepare", "devkeys", "seed"}
    assert {spec.get("build") for spec in python.values()} == {"."}
    assert len({spec.get("image") for spec in python.values()}) == 1
    for name in INFRA:
        assert "image" in services[name] and "build" not in services[name]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")


def test_commands_are_the_procfile_lines(services: dict) -> None:
    for name, command in _procfile().items():
        assert services[name]["command"] == _in_container(command), name
    assert "--bind 0.0.0.0:8000" in services["web"]["command"]


def test_redis_keeps_every_queued_task(services: dict) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_services_wait_for_healthy_dependencies(services: dict) -> None:
    for name in ("postgres", "redis", "web", "sandbox"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    healthy = {name for name, spec in services.items() if "healthcheck" in spec}
    for name, spec in services.items():
        for dependency, rule in spec.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if rule["condition"] == "service_healthy":
                assert dependency in healthy, (name, dependency)
            if name in PRODUCTION_SERVICES:  # a profile's service is not there to wait for
                assert dependency in PRODUCTION_SERVICES, (name, dependency)
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["prepare"]["condition"] == "service_completed_successfully"
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert services["prepare"]["command"] == "python manage.py migrate --noinput"
    assert services["seed"]["depends_on"]["prepare"]["condition"] == (
        "service_completed_successfully")
    assert services["sandbox"]["depends_on"]["devkeys"]["condition"] == (
        "service_completed_successfully")


def test_production_is_the_default_and_development_its_own_profile(services: dict) -> None:
    defaults = {name for name, spec in services.items() if "profiles" not in spec}
    assert defaults == PRODUCTION_SERVICES
    for name in DEV_SERVICES:
        assert services[name]["profiles"] == ["dev"], name
    assert "seed_demo" in services["seed"]["command"]
    assert "alipay_keys" in services["devkeys"]["command"]


@pytest.mark.parametrize("name", REQUIRED)
def test_each_setting_without_a_safe_default_is_required(name: str) -> None:
    text = COMPOSE.read_text()
    assert "${" + name + ":?" in text
    assert not re.search(r"\$\{" + name + r":?-", text), f"{name} has a fallback value"
    assert f"${name}" not in text and "${" + name + "}" not in text  # never unchecked

    with pytest.raises(MissingVariable) as missing:
        resolved({k: v for k, v in PRODUCTION_VARIABLES.items() if k != name})
    with pytest.raises(MissingVariable):
        resolved({**PRODUCTION_VARIABLES, name: ""})

    assert missing.value.name == name
    assert f"set {name}" in str(missing.value)


def test_production_services_get_the_operators_values_and_no_known_secret(
    services: dict,
) -> None:
    text = COMPOSE.read_text()
    assert "insecure" not in text and "change-me" not in text
    for name in _python_services(services):
        environment = service_environment(name, PRODUCTION_VARIABLES)
        assert environment["DJANGO_ENV"] == "production", name
        assert environment["DJANGO_DEBUG"] == "false", name
        for variable in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "ALIPAY_APPID",
                         "ALIPAY_SELLER_ID", "ALIPAY_RETURN_URL", "ALIPAY_NOTIFY_URL"):
            assert environment[variable] == PRODUCTION_VARIABLES[variable], (name, variable)
        assert environment["DATABASE_URL"] == (
            "postgres://shop:a-database-password@postgres:5432/shop"), name
        assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert environment["ALIPAY_GATEWAY"] == "https://openapi.alipay.com/gateway.do", name
    postgres = resolved(PRODUCTION_VARIABLES)["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"] == "a-database-password"


def test_production_services_carry_no_demo_users_and_make_no_keys(services: dict) -> None:
    production = {name: services[name] for name in PRODUCTION_SERVICES}
    dumped = yaml.safe_dump(production)
    for text in ("seed_demo", "admin-pass", "demo-pass", "alipay_keys", "--control"):
        assert text not in dumped, text
    for name in PRODUCTION_SERVICES & set(_python_services(services)):
        volumes = resolved(PRODUCTION_VARIABLES)["services"][name]["volumes"]
        assert volumes == ["/srv/shop/alipay-keys:/app/keys:ro"], name


def test_only_the_proxy_is_published_and_the_sandbox_on_loopback_only(services: dict) -> None:
    published = {name for name in PRODUCTION_SERVICES if services[name].get("ports")}
    assert published == {"proxy"}
    for spec in services.values():
        assert "network_mode" not in spec
    sandbox_ports = resolved(_dev_variables())["services"]["sandbox"]["ports"]
    assert sandbox_ports == ["127.0.0.1:8090:8090"]
    proxy_ports = resolved(PRODUCTION_VARIABLES)["services"]["proxy"]["ports"]
    assert proxy_ports == ["0.0.0.0:80:80", "0.0.0.0:443:443"]


def test_development_profile_values_point_at_the_sandbox_on_loopback() -> None:
    variables = _dev_variables()
    environment = service_environment("web", variables)
    assert environment["DJANGO_ENV"] == "development"
    assert environment["ALIPAY_GATEWAY"] == "http://sandbox:8090/gateway.do"
    assert environment["ALIPAY_NOTIFY_URL"] == "http://web:8000/payment/alipay/notify/"
    assert environment["ALIPAY_SELLER_ID"] == SELLER_ID
    proxy_ports = resolved(variables)["services"]["proxy"]["ports"]
    assert all(port.startswith("127.0.0.1:") for port in proxy_ports)
    assert (ROOT / variables["TLS_DIR"]).is_dir()
    assert not list((ROOT / variables["TLS_DIR"]).glob("*.conf"))


# Another network than the default one: each address must follow its variable.
OTHER_NETWORK = {"SHOP_SUBNET": "10.77.5.0/24", "SHOP_DYNAMIC_RANGE": "10.77.5.64/26",
                 "SHOP_GATEWAY_IP": "10.77.5.1", "SHOP_PROXY_IP": "10.77.5.9",
                 "SHOP_PROMETHEUS_IP": "10.77.5.10"}


def _addresses(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item.strip()) for item in value.split(",") if item.strip()]


@pytest.mark.parametrize("network", [{}, OTHER_NETWORK], ids=["default", "other"])
def test_compose_trusts_the_proxy_and_prometheus_alone_never_the_networks_gateway(
    services: dict, network: dict[str, str]
) -> None:
    """Connections from outside the compose network (Docker's userland proxy, a proxy on the
    host) arrive from its gateway, and a container without a fixed address may be anyone's:
    the web believes X-Forwarded-For from the proxy's fixed address only, and the metrics
    answer Prometheus's fixed address only."""
    variables = {**PRODUCTION_VARIABLES, **network}
    config = resolved(variables)
    ipam = config["networks"]["default"]["ipam"]["config"][0]
    subnet = ipaddress.ip_network(ipam["subnet"])  # strict: a network address
    dynamic = ipaddress.ip_network(ipam["ip_range"])
    gateway = ipaddress.ip_address(ipam["gateway"])
    proxy = ipaddress.ip_address(
        config["services"]["proxy"]["networks"]["default"]["ipv4_address"])
    assert subnet.is_private and dynamic.subnet_of(subnet) and gateway in subnet  # type: ignore[arg-type]
    if network:
        assert str(subnet) == network["SHOP_SUBNET"] and str(proxy) == network["SHOP_PROXY_IP"]

    web = service_environment("web", variables)
    assert _addresses(web["FORWARDED_ALLOW_IPS"]) == [ipaddress.ip_network(proxy)]
    for name in _python_services(services):
        environment = service_environment(name, variables)
        if name != "web":
            assert "FORWARDED_ALLOW_IPS" not in environment, name
        allowed = _addresses(environment["METRICS_ALLOWED_NETWORKS"])
        assert len(allowed) == 1 and allowed[0].num_addresses == 1, (name, allowed)
        prometheus = allowed[0].network_address
        if network:
            assert str(prometheus) == network["SHOP_PROMETHEUS_IP"]
        assert prometheus in subnet and prometheus not in dynamic, name
    for fixed in (proxy, prometheus):
        assert fixed in subnet and fixed not in dynamic and fixed != gateway
        assert fixed not in (subnet.network_address, subnet.broadcast_address)
    assert proxy != prometheus
    for name, spec in services.items():  # no other container asks for a fixed address
        if name != "proxy":
            assert "ipv4_address" not in str(spec.get("networks", "")), name
    healthcheck = " ".join(services["web"]["healthcheck"]["test"])
    assert "DJANGO_ALLOWED_HOSTS" in healthcheck and "X-Forwarded-Proto" in healthcheck


def test_docker_build_context_leaves_out_secrets_keys_and_certificates() -> None:
    """`COPY . .` copies the build context: an operator's .env (compose reads its secrets from
    there), key folders and certificates must never be baked into the image."""
    for path in (".env", ".env.production", "deploy/.env", "keys/app_private_key.pem",
                 "keys/alipay_public_key.pem", "keys/appCertPublicKey_2021004100000000.crt",
                 "keys/README.md", "keys/old/app_private_key.pem", "tls/privkey.pem",
                 "deploy/tls/fullchain.pem", "certs/shop.example.com.key", "server.crt",
                 "store.p12", "sandbox_ca/ca_key.pem", "var/sandbox/sandbox_ca/root_key.pem",
                 "alipay_sandbox/sandbox_ca/ca_cert.pem"):
        assert left_out_of_the_image(path), path
    # What the image runs: the code, its templates and static files, the settings' files, and
    # Alipay's public roots, which the sandbox needs in certificate mode.
    needed = ["manage.py", "pyproject.toml", "gunicorn.conf.py", "Procfile",
              "deploy/nginx.conf", "alipay_sandbox/data/ant_financial_e1_root.crt",
              "alipay_sandbox/data/nrcac_sm2_root.crt"]
    for package in ("config", "infra", "shop", "payment", "backoffice", "workers",
                    "alipay_sandbox"):
        needed += [str(path.relative_to(ROOT)) for path in (ROOT / package).rglob("*")
                   if path.suffix in (".py", ".html", ".css", ".js", ".svg", ".json")
                   and "__pycache__" not in path.parts]
    assert len(needed) > 100
    assert not [path for path in needed if left_out_of_the_image(path)]


def test_proxy_is_an_official_nginx_image_with_the_repository_config(services: dict) -> None:
    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:1\.\d+-alpine", proxy["image"])
    volumes = resolved(PRODUCTION_VARIABLES)["services"]["proxy"]["volumes"]
    assert volumes == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro",
                       "/srv/shop/tls:/etc/nginx/tls:ro"]
    assert "include /etc/nginx/tls/*.conf;" in NGINX_CONF.read_text()
    tls = (ROOT / "deploy" / "tls.conf").read_text()
    assert "listen 443 ssl;" in tls and "/etc/nginx/tls/fullchain.pem" in tls


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*(\w+)\s+([^;{]*);", text, re.MULTILINE):
        found.setdefault(name, []).append(value.strip())
    return found


def _seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m)?", value).groups()  # type: ignore[union-attr]
    return int(number) * (60 if unit == "m" else 1)


def test_proxy_bounds_slow_and_large_requests_and_buffers_them() -> None:
    from django.conf import settings

    directives = _directives(NGINX_CONF.read_text())
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout",
                 "keepalive_timeout", "proxy_connect_timeout", "proxy_send_timeout",
                 "proxy_read_timeout"):
        assert 0 < _seconds(directives[name][0]) <= 60, name
    size = re.fullmatch(r"(\d+)k", directives["client_max_body_size"][0])
    assert size is not None
    assert int(size.group(1)) * 1024 == settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= 512 * 1024
    assert directives["client_body_buffer_size"] == directives["client_max_body_size"]
    assert directives["proxy_request_buffering"] == ["on"]
    assert directives["proxy_buffering"] == ["on"]
    assert directives["server_tokens"] == ["off"]


def _kib(value: str) -> int:
    return int(re.fullmatch(r"(\d+)k", value).group(1)) * 1024  # type: ignore[union-attr]


def test_the_web_bounds_requests_as_the_proxy_does_and_passes_what_the_proxy_passes() -> None:
    """Reached without the proxy, the web refuses what the proxy would (config/serving.py); a
    header section the proxy passes, with the headers it adds, the web accepts."""
    from django.conf import settings

    directives = _directives(NGINX_CONF.read_text())
    number, size = directives["large_client_header_buffers"][0].split()
    proxy_headers_max = _kib(directives["client_header_buffer_size"][0]) + int(number) * _kib(size)
    assert proxy_headers_max + 4096 <= settings.HEADERS_MAX_SIZE <= 128 * 1024
    assert 0 < settings.HEADERS_MAX_COUNT <= 200
    assert _seconds(directives["client_header_timeout"][0]) == settings.HEADERS_TIMEOUT_SECONDS
    assert _seconds(directives["client_body_timeout"][0]) == settings.BODY_TIMEOUT_SECONDS


def test_proxy_sets_forwarded_and_security_headers_and_limits_payment_and_login() -> None:
    text = NGINX_CONF.read_text()
    headers = _directives(text)
    assert "X-Forwarded-For $remote_addr" in headers["proxy_set_header"]
    assert "X-Forwarded-Proto $scheme" in headers["proxy_set_header"]
    assert "Host $http_host" in headers["proxy_set_header"]  # the port too, as Origin has it
    added = {value.split()[0]: value for value in headers["add_header"]}
    # (Retry-After: on the proxy's own refusals of payment requests, below.)
    assert set(added) == {"X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                          "Strict-Transport-Security", "Retry-After"}
    assert all(value.endswith(" always") for value in added.values())
    assert re.search(r'""\s+nosniff;', text) and re.search(r'""\s+DENY;', text)
    assert re.search(r'https\s+"max-age=\d+', text)  # HSTS over TLS only
    zones = {zone: key for key, zone in re.findall(r"limit_req_zone (\$\w+) zone=(\w+):", text)}
    assert zones == {"payment_return": "$binary_remote_addr",
                     "payment_notify": "$binary_remote_addr", "login": "$login_attempt"}
    assert re.search(r"map \$request_method \$login_attempt \{\s+POST\s+\$binary_remote_addr;",
                     text)  # per client, sign-in attempts only
    locations = dict(re.findall(r"location = (\S+) \{([^}]*)\}", text))
    for path, zone, upstream in (
            ("/payment/status/", "payment_return", "web_return"),
            ("/payment/alipay/notify/", "payment_notify", "web_notify"),
            ("/login/", "login", "web"), ("/admin/login/", "login", "web"),
            ("/authorizations/", "login", "web")):
        assert f"limit_req zone={zone} " in locations[path], path
        assert f"proxy_pass http://{upstream};" in locations[path], path
    # A payment request no replica can take is refused by the proxy, with Retry-After, in
    # the endpoint's own words (`fail` for Alipay); the web's own answers pass through.
    busy = dict(re.findall(r"location @(\w+) \{([^}]*)\}", text))
    for path, name, answer in (("/payment/status/", "return_busy", "return 503 '{"),
                               ("/payment/alipay/notify/", "notify_busy", 'return 503 "fail";')):
        assert f"error_page 502 = @{name};" in locations[path], path
        assert answer in busy[name] and "add_header Retry-After 1 always;" in busy[name], name
    assert "proxy_intercept_errors" not in text


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[[line.startswith("FROM") for line in lines].index(True)] == (
        "FROM python:3.11-slim")
    assert "RUN pip install ." in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    text = (ROOT / "Dockerfile").read_text()
    command = text[text.index("\nCMD "):]
    assert "config.asgi:application" in command and "config.serving.Worker" in command
    assert {".git", ".venv", "var"} <= set(ignored)


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return result.returncode == 0


@pytest.mark.slow
def test_docker_compose_config_accepts_the_file() -> None:
    if not _compose_plugin():
        pytest.skip("the docker compose plugin is not installed")

    def config(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), *args, "config", "--quiet"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={"PATH": os.environ["PATH"], **variables},
        )

    production = config(**PRODUCTION_VARIABLES)
    development = config("--env-file", str(ROOT / "deploy" / "dev.env"), "--profile", "dev")
    unset = config()

    assert production.returncode == 0, production.stderr
    assert development.returncode == 0, development.stderr
    assert unset.returncode != 0 and "DJANGO_SECRET_KEY" in unset.stderr


# More than one host ----------------------------------------------------------------------------
SCALED_SERVICES = ("web", "worker", "beat")


def test_web_worker_and_beat_scale_without_clashing(services: dict) -> None:
    """`docker compose up --scale web=N --scale worker=N --scale beat=2`: no fixed names,
    addresses or published ports, and each worker its own Celery node name."""
    for name in SCALED_SERVICES:
        spec = services[name]
        for fixed in ("container_name", "hostname", "ports", "mac_address"):
            assert fixed not in spec, (name, fixed)
        assert "ipv4_address" not in str(spec.get("networks", "")), name
    # The node name is celery@<container hostname> unless given; given, it must hold %h.
    worker = services["worker"]["command"].split()
    for flag in ("--hostname", "-n"):
        if flag in worker:
            assert "%h" in worker[worker.index(flag) + 1]
    assert not any(arg.startswith("--hostname=") and "%h" not in arg for arg in worker)
    # Each replica's health check asks its own node.
    assert "celery@$$HOSTNAME" in " ".join(services["worker"]["healthcheck"]["test"])


@pytest.mark.slow
def test_beat_replicas_share_one_lock_in_redis(services: dict) -> None:
    environment = service_environment("beat", PRODUCTION_VARIABLES)
    assert environment["CELERY_BROKER_URL"].startswith("redis://")
    assert services["beat"]["command"].split()[:4] == ["celery", "-A", "workers", "beat"]
    assert "--scheduler" not in services["beat"]["command"]  # the settings choose it
    code = ("import django; django.setup(); from workers.celery import app; "
            "print(app.conf.beat_scheduler)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings",
             "CELERY_BROKER_URL": environment["CELERY_BROKER_URL"]},
    )
    assert result.stdout.split() == ["workers.beat:LockedScheduler"], result.stderr


def test_proxy_spreads_requests_over_every_web_replica(services: dict) -> None:
    text = NGINX_CONF.read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{([^}]*)\}", text))
    # Pages, then each payment endpoint with its own bound of requests in flight per replica.
    assert set(upstreams) == {"web", "web_notify", "web_return"}
    for name, body in upstreams.items():
        servers = re.findall(r"^\s*server\s+([^;]+);", body, re.MULTILINE)
        # One name standing for every replica, asked again as replicas come and go...
        bound = "" if name == "web" else r" max_conns=\d+"
        assert len(servers) == 1 and re.fullmatch(f"web:8000 resolve{bound}", servers[0]), name
        assert re.search(rf"^\s*zone {name} \d+k;", body, re.MULTILINE), name
        assert "keepalive 32;" in body, name
    # ...of Docker's embedded DNS, often enough to notice a replaced container.
    resolver = re.search(r"^\s*resolver 127\.0\.0\.11 valid=(\d+)s ipv6=off;", text,
                         re.MULTILINE)
    assert resolver is not None and 0 < int(resolver.group(1)) <= 30
    # `resolve` in a plain upstream needs nginx 1.27.3 or later.
    version = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", services["proxy"]["image"])
    assert version is not None
    assert tuple(int(part or 0) for part in version.groups()) >= (1, 27, 3)
    passes = set(re.findall(r"proxy_pass ([^;]+);", text))
    assert passes == {f"http://{name}" for name in upstreams}
