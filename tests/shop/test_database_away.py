"""The API while PostgreSQL is away (a restart, a failover): 503 with a message a person can
read and a time to try again, never a 500 and a stack trace."""
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import Client

from tests.factories import sku_create


def _database_away(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    raise OperationalError("consuming input failed: server closed the connection unexpectedly")


@pytest.mark.django_db
def test_api_answers_503_while_the_database_is_away(client: Client) -> None:
    sku = sku_create(price="5.00", stock=3)
    assert client.post("/users/", {"username": "away", "password": "away-pass-123"},
                       content_type="application/json").status_code == 201
    token = client.post("/authorizations/", {"username": "away", "password": "away-pass-123"},
                        content_type="application/json").json()["token"]
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}

    with connection.execute_wrapper(_database_away):
        created = client.post("/orders/", {"items": [{"sku_id": sku.pk, "count": 1}]},
                              content_type="application/json", **auth)
        listed = client.get("/orders/", **auth)

    for response in (created, listed):
        assert response.status_code == 503, response.content
        assert response.json()["message"] == "The shop cannot be reached right now; try again " \
                                             "in a moment."
        assert response["Retry-After"] == "5"
    assert client.get("/orders/", **auth).json() == []  # nothing was written
