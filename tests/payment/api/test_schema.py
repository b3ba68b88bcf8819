"""The published OpenAPI schema documents the payment endpoints, the intake ones included."""
import pytest
from django.test import Client


@pytest.mark.django_db
def test_schema_documents_every_payment_endpoint(client: Client) -> None:
    response = client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/payment/status/"]) == {"put", "post"}
    put = paths["/payment/status/"]["put"]
    assert {p["name"] for p in put["parameters"] if p["required"]} == {"sign", "out_trade_no"}
    assert set(put["responses"]) == {"200", "202", "400", "403", "409", "413", "429", "503"}
    assert set(paths["/payment/alipay/notify/"]) == {"post"}
    assert "get" in paths["/orders/{order_id}/payment/"]


@pytest.mark.django_db
def test_schema_documents_the_staff_refund_endpoint(client: Client) -> None:
    schema = client.get("/api/schema/", {"format": "json"}).json()

    post = schema["paths"]["/orders/{order_id}/refunds/"]["post"]
    assert {"200", "201", "400", "403", "404", "409", "422"} <= set(post["responses"])
    assert [p["name"] for p in post["parameters"] if p["in"] == "header"] == ["Idempotency-Key"]
    body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert set(schema["components"]["schemas"][body]["required"]) == {"amount", "reason"}
    created = post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    refund = schema["components"]["schemas"][created.split("/")[-1]]["properties"]
    assert {"out_request_no", "amount", "state", "sub_code"} <= set(refund)


@pytest.mark.django_db
def test_every_json_answer_is_described_by_a_schema(client: Client) -> None:
    """No operation answers an untyped object: a client can be generated from the schema."""
    schema = client.get("/api/schema/", {"format": "json"}).json()
    untyped = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                body = answer.get("content", {}).get("application/json", {}).get("schema")
                if body is not None and "$ref" not in body and not body.get("properties") \
                        and body.get("type") != "array":
                    untyped.append(f"{method.upper()} {path} {status}")
    assert untyped == []
    status = schema["paths"]["/orders/{order_id}/payment/status/"]["get"]["responses"]["200"]
    name = status["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert {"order_id", "status", "trade_id", "paid_at", "paid_amount", "canceled_by",
            "cancel_reason", "canceled_at", "latest_event", "history", "refunds"} == set(
        schema["components"]["schemas"][name]["properties"])


def test_api_docs_are_served_from_installed_assets(client: Client) -> None:
    docs = client.get("/api/docs/")

    assert docs.status_code == 200
    page = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()
    bundle = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert client.get("/api/redoc/").status_code == 200
