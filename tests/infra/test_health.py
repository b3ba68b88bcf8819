"""GET /healthz: the database and the broker, as the container healthcheck asks."""
import time

import pytest
from django.test import Client
from kombu import Connection


@pytest.mark.django_db
def test_healthz_reports_database_and_broker_ok() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_healthz_names_the_broker_when_it_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import current_app

    from workers import celery_app

    # The health check asks the process's current app: the workers' one, loaded by Django.
    assert current_app._get_current_object() is celery_app

    def unreachable(**options: object) -> Connection:
        return Connection("redis://127.0.0.1:1/0", **options)  # nothing listens on port 1

    monkeypatch.setattr(celery_app, "connection_for_write", unreachable)
    started = time.monotonic()

    response = Client().get("/healthz")

    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["broker"].startswith("error")
