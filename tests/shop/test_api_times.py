"""One rule for times in the API: ISO 8601 in UTC with `Z`, whatever the shop's time zone."""
import pytest
from django.test import Client

from tests.factories import sku_create


@pytest.mark.django_db
def test_api_times_are_utc_with_z(client: Client) -> None:
    sku = sku_create(price="5.00", stock=3)
    assert client.post("/users/", {"username": "zulu", "password": "zulu-pass-123"},
                       content_type="application/json").status_code == 201
    signed_in = client.post("/authorizations/", {"username": "zulu", "password": "zulu-pass-123"},
                            content_type="application/json").json()
    auth = {"HTTP_AUTHORIZATION": f"Token {signed_in['token']}"}
    created = client.post("/orders/", {"items": [{"sku_id": sku.pk, "count": 1}]},
                          content_type="application/json", **auth)
    assert created.status_code == 201, created.content

    orders = client.get("/orders/", **auth).json()
    detail = client.get(f"/orders/{created.json()['order_id']}/", **auth).json()

    assert signed_in["expiry"].endswith("Z")
    times = [o["created_at"] for o in (orders if isinstance(orders, list) else orders["results"])]
    assert times and all(t.endswith("Z") for t in times)
    assert detail["created_at"].endswith("Z")
