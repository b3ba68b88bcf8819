"""Production mode (DJANGO_ENV=production): Django's deployment check is clean with the
environment the production profile of docker-compose.yml gives the web, and every entry point
(manage.py, gunicorn, the Celery worker and beat) refuses to start without a setting that has
no safe default, naming it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings
from django.db import connection

from shop.models import User
from tests.config.compose import PRODUCTION_VARIABLES, resolved, service_environment
from tests.support import (
    ROOT,
    ManagedProcess,
    free_port,
    procfile_command,
    redis_url,
    wait_for_port,
)


@pytest.fixture(scope="module")
def production_env(dev_keys: Path) -> dict[str, str]:
    """The web container's environment; only the key files' paths are this machine's."""
    return {
        "PATH": os.environ["PATH"],
        **service_environment("web", PRODUCTION_VARIABLES),
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(dev_keys / "app_private_key.pem"),
        "ALIPAY_PUBLIC_KEY_PATH": str(dev_keys / "alipay_public_key.pem"),
    }


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in names}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_deploy_check_is_clean_with_the_production_profile_environment(
    production_env: dict[str, str],
) -> None:
    assert production_env["DJANGO_ENV"] == "production"

    result = _manage(production_env, "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "removed", "message"),
    [
        ({}, "DJANGO_SECRET_KEY", "(shop.E002) DJANGO_SECRET_KEY is not set"),
        ({"DJANGO_SECRET_KEY": "dev-only-insecure-secret-key-change-me"}, "",
         "(shop.E003) DJANGO_SECRET_KEY is the development key"),
        ({"DJANGO_SECRET_KEY": "short-but-not-empty"}, "",
         "(shop.E004) DJANGO_SECRET_KEY is too short or too simple"),
        ({"DJANGO_SECRET_KEY": "a" * 60}, "",
         "(shop.E004) DJANGO_SECRET_KEY is too short or too simple"),
        ({}, "DJANGO_ALLOWED_HOSTS", "(shop.E005) DJANGO_ALLOWED_HOSTS is empty"),
        ({"DJANGO_ALLOWED_HOSTS": "shop.example.com,*"}, "",
         "(shop.E006) DJANGO_ALLOWED_HOSTS contains '*'"),
        ({}, "ALIPAY_SELLER_ID", "(shop.E007) ALIPAY_SELLER_ID is empty"),
        ({"ALIPAY_SELLER_ID": ""}, "", "(shop.E007) ALIPAY_SELLER_ID is empty"),
        ({"DJANGO_DEBUG": "1"}, "", "(shop.E008) DJANGO_DEBUG is on"),
        ({"DJANGO_ENV": "prod"}, "", "(shop.E001) DJANGO_ENV is 'prod'"),
    ],
    ids=["no-secret-key", "development-secret-key", "short-secret-key", "simple-secret-key",
         "no-allowed-hosts", "any-host", "no-seller-id", "empty-seller-id", "debug",
         "unknown-environment"],
)
def test_each_unsafe_production_setting_stops_manage_py_with_its_message(
    production_env: dict[str, str], changes: dict[str, str], removed: str, message: str,
) -> None:
    env = {**_without(production_env, removed), **changes}

    result = _manage(env, "check")

    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "SystemCheckError" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["web", "worker", "beat", "wsgi"])
def test_every_entry_point_refuses_to_start_in_production_without_a_seller_id(
    production_env: dict[str, str], entry_point: str, tmp_path: Path,
) -> None:
    # A Redis of its own, reachable: the refusal comes before anything is written there (a
    # beat refused after its scheduler was built had replaced the running beat's schedule).
    broker = redis_url(12, settings.CELERY_BROKER_URL)
    redis.Redis.from_url(broker).flushdb()
    env = {
        **_without(production_env, "ALIPAY_SELLER_ID"),
        "CELERY_BROKER_URL": broker,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "WEB_BIND": f"127.0.0.1:{free_port()}",
        # Workers that fail to boot together: gunicorn's halt, reaping the others, met a
        # second failed boot and ended with its traceback (gunicorn.conf.py).
        "WEB_CONCURRENCY": "6",
    }
    command = (procfile_command(entry_point) if entry_point != "wsgi"
               else [sys.executable, "-c", "import config.wsgi"])

    # gunicorn used to restart a refused worker for ever; it must stop by itself.
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=90)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "error: (shop.E007) ALIPAY_SELLER_ID is empty" in output, output
    assert "start-up refused: 1 system check error(s)" in output
    assert "Traceback" not in output, output
    assert redis.Redis.from_url(broker).keys("*") == []
    if entry_point == "web":
        assert result.returncode == 3  # gunicorn's "worker failed to boot": the master stops
        assert "Reason: Worker failed to boot." in output


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_demo_users_are_never_created_in_production(production_env: dict[str, str]) -> None:
    db = connection.settings_dict
    env = {**production_env, "DATABASE_URL": (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}")}

    result = _manage(env, "seed_demo")

    assert result.returncode == 1
    assert "seed_demo does not run with DJANGO_ENV=production" in result.stderr
    assert not User.objects.filter(username__in=["demo", "admin"]).exists()


def test_production_web_passes_its_compose_healthcheck_and_sends_plain_http_to_https(
    production_env: dict[str, str], worker_env: dict[str, str], log_dir: Path,
) -> None:
    port = free_port()
    env = {**production_env, "WEB_BIND": f"127.0.0.1:{port}",
           "DATABASE_URL": worker_env["DATABASE_URL"],
           "CELERY_BROKER_URL": worker_env["CELERY_BROKER_URL"]}
    healthcheck = resolved(PRODUCTION_VARIABLES)["services"]["web"]["healthcheck"]["test"]
    assert healthcheck[:2] == ["CMD", "python"]
    web = ManagedProcess("production-web", procfile_command("web"), env, log_dir).start()
    try:
        wait_for_port(port)
        # The container's port is this test's.
        checked = subprocess.run(
            [sys.executable, *(arg.replace(":8000/", f":{port}/") for arg in healthcheck[2:])],
            env=env, capture_output=True, text=True, timeout=30,
        )
        host = {"Host": "shop.example.com"}
        plain = requests.get(f"http://127.0.0.1:{port}/login/", headers=host,
                             allow_redirects=False, timeout=10)
        secure = requests.get(f"http://127.0.0.1:{port}/login/", timeout=10,
                              headers={**host, "X-Forwarded-Proto": "https"})
        foreign = requests.get(f"http://127.0.0.1:{port}/login/", timeout=10,
                               headers={"X-Forwarded-Proto": "https"})
    finally:
        web.stop()

    assert checked.returncode == 0, checked.stderr + web.log_text()[-2000:]
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://shop.example.com/login/"
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload")
    assert secure.headers["X-Frame-Options"] == "DENY"
    assert "secure" in secure.headers["Set-Cookie"].lower()  # the CSRF cookie, HTTPS only
    assert foreign.status_code == 400  # 127.0.0.1 is not a production host name
