"""The operator's admin in Chromium, from desktop to phone width: a failed "Query Alipay now"
in the error style, records read-only without Save buttons, every column of the payment-event
list on screen at 1400 and 1920 px, and a signature wrapped inside its box. Each page is
checked for horizontal overflow and saved as a screenshot (the `snap` fixture)."""
import re
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo
from tests.browser import PASSWORD, Snap
from tests.factories import UserFactory, order_with_link
from tests.support import query_params, wait_for

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("celery_workers")]

WIDE = (1400, 1920)
EVENT_COLUMNS = ("state", "attempts", "deliveries", "short_reason", "short_error")


def _admin_sign_in(page: Page, web: str) -> None:
    UserFactory(username="operator", password=PASSWORD, is_staff=True, is_superuser=True)
    page.goto(f"{web}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("operator")


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", css)[:3])


def test_operator_pages_show_failures_as_failures_and_records_read_only(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap, screenshots: Path,
) -> None:
    # Paid at Alipay, notification lost; Alipay's query answers 500 for now.
    sandbox.set_faults(notify_drop=True)
    order, link = order_with_link(total_amount=Decimal("35.00"))
    paid = sandbox.pay(link)
    sandbox.set_faults(notify_drop=True, error_rate=1.0, error_kind="http500",
                       methods=["alipay.trade.query"])
    _admin_sign_in(page, web)

    page.goto(f"{web}/admin/shop/orderinfo/")
    page.check(f"input[name=_selected_action][value='{order.order_id}']")
    page.select_option("select[name=action]", "query_alipay_now")
    page.click("button[title='Run the selected action']")

    failure = page.locator(".messagelist li", has_text=order.order_id)
    expect(failure).to_have_class(re.compile(r"\berror\b"))
    red, green, blue = _rgb(failure.evaluate("el => getComputedStyle(el).backgroundColor"))
    assert red > green and red > blue, "a failure is shown in a reddish box"
    snap("p_admin_query_failed")
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID

    # The buyer's return arrives: the workers apply it; its event carries Alipay's signature.
    sandbox.clear_faults()
    query = urllib.parse.urlencode(query_params(paid["return_url"]))
    assert requests.put(f"{web}/payment/status/?{query}", timeout=30).status_code == 200
    payment = wait_for(lambda: Payment.objects.filter(order=order).first(), timeout=20)

    page.goto(f"{web}/admin/payment/payment/{payment.pk}/change/")
    expect(page.locator(".field-trade_id .readonly")).to_have_text(paid["trade_no"])
    assert page.locator("input[name=_save], input[name=_continue]").count() == 0
    assert page.locator("[name=refund_tried_at]").count() == 0
    expect(page.locator(".field-refund_tried_at .readonly")).to_be_visible()
    snap("q_admin_payment_read_only")

    event = PaymentEvent.objects.filter(order=order, source=PaymentEvent.Source.RETURN).get()
    page.goto(f"{web}/admin/payment/paymentevent/{event.pk}/change/")
    raw = page.locator("pre.raw-data")
    expect(raw).to_contain_text('"sign"')
    assert page.locator("input[name=_save]").count() == 0
    for width in (*WIDE, 1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        inside = raw.evaluate("el => el.scrollWidth <= el.clientWidth + 1 && "
                              "el.getBoundingClientRect().right <= window.innerWidth")
        assert inside, f"the raw data overflows its box at {width} px"
    snap("r_admin_event_raw_data")

    # The longest texts the list shows: a reason and a last error of a few hundred characters.
    PaymentEvent.objects.filter(pk=event.pk).update(
        reason="amount mismatch: Alipay says 35.01, the order says 35.00 " * 4,
        last_error="OperationalError: connection to server at 127.0.0.1 port 5432 failed " * 4)
    page.goto(f"{web}/admin/payment/paymentevent/")
    for width in WIDE:
        page.set_viewport_size({"width": width, "height": 900})
        # The list scrolls inside its box: a column past the box's edge is hidden.
        visible_right = page.locator("#changelist .results").evaluate(
            "el => Math.min(el.getBoundingClientRect().right, window.innerWidth)")
        for column in EVENT_COLUMNS:
            right = page.locator(f"#result_list th.column-{column}").evaluate(
                "el => el.getBoundingClientRect().right")
            assert right <= visible_right + 1, f"the {column} column is cut off at {width} px"
        page.screenshot(path=screenshots / f"s_admin_event_list_{width}.png", full_page=True)
    snap("s_admin_event_list")
