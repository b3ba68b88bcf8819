"""Logs name ids, never signatures or whole payloads: the web's access log and the workers."""
import urllib.parse
from pathlib import Path

import pytest
import requests

from alipay_sandbox.client import SandboxControl
from tests.factories import sku_create
from tests.support import (
    ManagedProcess,
    ShopClient,
    free_port,
    procfile_command,
    query_params,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_paid_return_leaves_no_signature_in_any_log(
    shop: ShopClient, sandbox: SandboxControl, celery_workers: ManagedProcess,
    worker_env: dict[str, str], log_dir: Path,
) -> None:
    port = free_port()
    web = ManagedProcess("logged-web", procfile_command("web"),
                         {**worker_env, "WEB_BIND": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        wait_for_port(port)
        sku = sku_create(price="7.00", stock=3)
        shop.register_and_login("quiet")
        order_id = shop.order([{"sku_id": sku.pk, "count": 1}])["order_id"]
        paid = sandbox.pay(shop.pay_link(order_id).json()["alipay_url"])
        params = query_params(paid["return_url"])

        response = requests.put(
            f"http://127.0.0.1:{port}/payment/status/?{urllib.parse.urlencode(params)}",
            timeout=30,
        )

        assert response.status_code == 200, response.text
    finally:
        web.stop()
    access_log = web.log_text()
    assert "PUT /payment/status/ HTTP/1.1" in access_log
    for log in (access_log, celery_workers.log_text()):
        assert params["sign"][:40] not in log
        assert urllib.parse.quote(params["sign"][:40], safe="") not in log
    assert order_id in celery_workers.log_text()
