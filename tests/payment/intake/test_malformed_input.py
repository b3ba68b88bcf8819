"""Malformed and hostile input against the production web process: never a 5xx.

A hand-written corpus of what broke before (deep JSON, lone surrogates, NUL bytes in paths,
look-alike usernames) and what an attacker sends, then a Hypothesis-generated corpus of junk
bodies, query strings and content types, then a schema-driven run of schemathesis over every
operation of the published OpenAPI schema (bounded: a few dozen cases per operation).
"""
import json
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

FUZZ_SETTINGS = hypothesis.settings(
    max_examples=25, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def token(asgi_web: str) -> Iterator[str]:
    username = f"fuzz{time.time_ns() % 10**9}"
    password = "fuzz-pass-123"
    created = requests.post(f"{asgi_web}/users/", json={"username": username,
                                                        "password": password}, timeout=10)
    assert created.status_code == 201, created.text
    answer = requests.post(f"{asgi_web}/authorizations/", timeout=10,
                           json={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    yield str(answer.json()["token"])


def _send(base: str, method: str, path: str, token: str | None = None,
          **kwargs: Any) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Token {token}"
    return requests.request(method, f"{base}{path}", headers=headers, timeout=15, **kwargs)


def _corpus() -> list[tuple[str, str, dict[str, Any]]]:
    deep = "[" * 100_000
    surrogate = '{"out_trade_no": "1", "sign": "\\ud800\\ud800\\ud800\\ud800", "x": "\\udfff"}'
    json_type = {"Content-Type": "application/json"}
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", "/payment/status/", {"data": deep, "headers": json_type}),
        ("PUT", "/payment/status/", {"data": "[" * 30_000, "headers": json_type}),
        ("POST", "/orders/", {"data": deep, "headers": json_type}),
        ("POST", "/orders/", {"data": "{" * 20_000, "headers": json_type}),
        ("POST", "/users/", {"data": "[" * 20_000, "headers": json_type}),
        ("PUT", "/payment/status/", {"data": surrogate, "headers": json_type}),
        ("POST", "/payment/alipay/notify/", {"data": "sign=%ED%A0%80&out_trade_no=1",
                                             "headers": form_type}),
        ("POST", "/orders/", {"data": '{"skus": [{"sku_id": "\\ud800", "count": 1}]}',
                              "headers": json_type}),
        ("POST", "/users/", {"json": {"username": "ｄｅｍｏ", "password": "x" * 12}}),
        ("POST", "/users/", {"json": {"username": "\x00", "password": "x" * 12}}),
        ("POST", "/authorizations/", {"json": {"username": "\ud800", "password": "x"}}),
        ("GET", "/orders/%00/", {}),
        ("GET", "/orders/%00/payment/", {}),
        ("GET", "/orders/%00/payment/status/", {}),
        ("GET", "/orders/%ff%fe/payment/", {}),
        ("GET", "/orders/" + "9" * 5000 + "/", {}),
        ("PUT", "/payment/status/?" + "&".join(f"k{i}=v" for i in range(2000)), {}),
        ("PUT", "/payment/status/?out_trade_no=%00&sign=%00", {}),
        ("PUT", "/payment/status/", {"data": b"\xff\xfe\x00", "headers": form_type}),
        ("POST", "/payment/alipay/notify/", {"data": "a" * 200_000, "headers": form_type}),
        ("POST", "/payment/alipay/notify/", {"data": "{}", "headers": json_type}),
        ("POST", "/orders/", {"data": "skus=1&skus=2", "headers": form_type}),
        ("POST", "/orders/", {"json": {"skus": [{"sku_id": 1, "count": 10**30}]}}),
        ("POST", "/orders/", {"json": {"skus": [{"sku_id": -1, "count": 1.5}]}}),
        ("POST", "/orders/", {"json": {"skus": "x" * 10_000}}),
        ("GET", "/skus/?page=-1&page_size=999999999999", {}),
        ("GET", "/api/schema/?format=%00", {}),
        ("GET", "/pay_success.html?out_trade_no=%00&sign=\ud800", {}),
    ]
    return cases


def test_hand_written_corpus_gets_no_5xx(asgi_web: str, token: str) -> None:
    failures = []
    for method, path, kwargs in _corpus():
        for auth in (None, token):
            response = _send(asgi_web, method, path, auth, **kwargs)
            if response.status_code >= 500:
                failures.append((method, path[:80], auth is not None, response.status_code))
    assert failures == []


PATHS = ["/payment/status/", "/payment/alipay/notify/", "/orders/", "/users/",
         "/authorizations/", "/orders/1/payment/", "/orders/1/payment/status/"]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain",
                 "multipart/form-data", "multipart/form-data; boundary=x", "", "application/xml",
                 "application/json; charset=gbk"]


@st.composite
def junk_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "PATCH", "DELETE"]))
    path = draw(st.sampled_from(PATHS))
    query = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=8))
    body = draw(st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=30)
        .map(lambda v: json.dumps(v).encode()),
    ))
    return method, path, {"params": query, "data": body,
                          "headers": {"Content-Type": draw(st.sampled_from(CONTENT_TYPES))}}


def test_generated_junk_gets_no_5xx(asgi_web: str, token: str) -> None:
    failures: list[tuple[str, str, int]] = []

    @hypothesis.settings(FUZZ_SETTINGS, max_examples=300)
    @hypothesis.given(request=junk_requests(), authenticated=st.booleans())
    def send(request: tuple[str, str, dict[str, Any]], authenticated: bool) -> None:
        method, path, kwargs = request
        response = _send(asgi_web, method, path, token if authenticated else None, **kwargs)
        if response.status_code >= 500:
            failures.append((method, path, response.status_code))

    send()
    assert failures == []


def test_schema_driven_fuzz_gets_no_5xx(asgi_web: str, token: str) -> None:
    published = requests.get(f"{asgi_web}/api/schema/", params={"format": "json"}, timeout=10)
    schema = schemathesis.openapi.from_dict(published.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{operation.method.upper()} {operation.path}" for operation in operations}
    assert {"PUT /payment/status/", "POST /payment/alipay/notify/",
            "GET /orders/{order_id}/payment/"} <= labels
    failures: list[tuple[str, int, str]] = []

    for operation in operations:
        @FUZZ_SETTINGS
        @hypothesis.given(case=operation.as_strategy(), authenticated=st.booleans())
        def send(case: schemathesis.Case, authenticated: bool) -> None:
            headers = {"Authorization": f"Token {token}"} if authenticated else {}
            response = case.call(base_url=asgi_web, headers=headers, timeout=15)
            if response.status_code >= 500:
                failures.append((f"{case.method} {case.formatted_path}", response.status_code,
                                 response.text[:200]))

        send()
    assert failures == [], failures
