"""What is expected in operation is logged as such: a gateway that stays down makes a task give
up with a WARNING and no traceback, since the work is safe in the database."""
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment.tasks import order_expire_task
from shop.models import OrderInfo
from tests.factories import order_with_link

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_gateway_that_stays_down_is_a_warning_not_an_error(
    sandbox: SandboxControl, exclusive_workers: Any
) -> None:
    sandbox.set_faults(error_rate=1.0, error_kind="http500")
    worker = exclusive_workers("gatewaydown", concurrency=1, PAYMENT_EVENT_MAX_ATTEMPTS="2",
                               PAYMENT_RETRY_BACKOFF="1", PAYMENT_RETRY_BACKOFF_MAX="2")
    order, _ = order_with_link(total_amount=Decimal("1.00"))  # so expiry must ask Alipay
    OrderInfo.objects.filter(pk=order.pk).update(
        created_at=timezone.now() - timedelta(days=1))

    order_expire_task.delay(order.order_id)

    worker.wait_log("gave up", timeout=60)
    log = worker.log_text()
    assert "GatewayUnavailable" in log  # it did fail, and said so
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID  # still safe
