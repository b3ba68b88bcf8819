"""The dashboard page in the admin: who may open it, its figures, and the lists it links to."""
import html
import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from backoffice.dashboard import queries
from payment.models import Payment
from tests.factories import (
    StaffFactory,
    attempt_checked_create,
    bill_report_create,
    event_create,
    paid_order_create,
    refund_create,
)
from tests.support import ROOT, process_env

pytestmark = pytest.mark.django_db

URL = "/admin/dashboard/"
VIEW_ALL = ["payment.view_paymentevent", "payment.view_payment", "payment.view_paymentattempt",
            "payment.view_refund", "payment.view_billreport"]
H = timedelta(hours=1)


def _staff(permissions: list[str], *, is_staff: bool = True) -> Client:
    client = Client()
    client.force_login(StaffFactory(permissions=permissions, is_staff=is_staff))
    return client


def figures(page: str) -> dict[str, str]:
    """data-figure -> data-value, as the page shows them."""
    return dict(re.findall(r'data-figure="([^"]+)" data-value="([^"]*)"', page))


def figure_links(page: str) -> dict[str, str]:
    """data-figure or data-link -> the admin list it links to."""
    found = re.findall(r'href="([^"]+)" data-(?:figure|link)="([^"]+)"', page)
    return {key: html.unescape(href) for href, key in found}


def bar_links(page: str) -> list[tuple[str, str, int]]:
    """(link, tooltip, count) of every bar that links to the rows it counts."""
    found = re.findall(r'<a href="([^"]+)"><rect [^>]*><title>([^<]*): (\d+)</title>', page)
    return [(html.unescape(href), html.unescape(title), int(n)) for href, title, n in found]


def _listed(client: Client, url: str) -> int:
    response = client.get(url)
    assert response.status_code == 200, url
    assert "e=1" not in response.get("Location", ""), url  # the admin refused the filter
    return int(response.context["cl"].result_count)


def _a_day_of_everything(window: queries.Window) -> None:
    start = window.start
    for hour, seconds in ((2, 30), (2, 90), (9, 600)):
        paid_at = start + hour * H
        paid_order_create(source="notify", paid_at=paid_at,
                          link_at=paid_at - timedelta(seconds=seconds))
    late = paid_order_create(source="return", paid_at=start + 9 * H,
                             status=Payment.Status.REFUND_PENDING)
    paid_order_create(source="query", paid_at=start + 15 * H)
    for state in ("applied", "applied", "rejected", "dead"):
        event_create(state=state, received_at=start + 3 * H)
    event_create(state="received", received_at=start + 20 * H)
    event_create(state="dead", received_at=start - 2 * H,  # still dead, from before
                 last_error="GatewayUnavailable: alipay.trade.query: URLError")
    event_create(state="applied", received_at=start + 5 * H,
                 last_error="GatewayRejected: 40004 ACQ.SYSTEM_ERROR")
    attempt_checked_create(result="applied", checked_at=start + 6 * H)
    attempt_checked_create(result="WAIT_BUYER_PAY", checked_at=start + 6 * H)
    attempt_checked_create(result="error: alipay.trade.query: 20000", checked_at=start + 7 * H)
    attempt_checked_create(result="something new", checked_at=start + 7 * H)
    refund_create(payment=late, state="succeeded", requested_at=start + 10 * H, amount="4.00")
    refund_create(payment=late, state="failed", requested_at=start + 11 * H,
                  last_error="40004 ACQ.TRADE_HAS_CLOSE")
    refund_create(payment=late, state="unknown", requested_at=start - H,
                  last_error="refund: alipay.trade.refund: URLError")
    bill_report_create(day=timezone.localdate() - timedelta(days=1),
                       findings={"missing_here": 1, "refund_mismatch": 2}, matched=5)


def test_dashboard_shows_the_figures_and_links_each_to_the_rows_it_counts() -> None:
    _a_day_of_everything(queries.dashboard_window())
    client = _staff(VIEW_ALL)

    response = client.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    shown = figures(page)
    assert shown["payments.total"] == "5"
    assert (shown["payments.source.notify"], shown["payments.source.return"],
            shown["payments.source.query"]) == ("3", "1", "1")
    assert shown["time_to_paid.count"] == "3"
    assert (shown["time_to_paid.p50"], shown["time_to_paid.p95"]) == ("90.000", "549.000")
    assert (shown["events.waiting"], shown["events.dead"]) == ("1", "2")
    assert (shown["events.state.rejected"], shown["events.state.dead"]) == ("1", "1")
    assert (shown["reconciliation.total"], shown["reconciliation.paid"],
            shown["reconciliation.error"], shown["reconciliation.other"]) == ("4", "1", "1", "1")
    assert shown["bills.findings"] == "3"
    assert "No reconciliation report for" in page  # six of the seven days
    assert (shown["errors.events"], shown["errors.reconciliation"],
            shown["errors.refunds"]) == ("1", "1", "1")
    assert (shown["refunds.open"], shown["refunds.succeeded_amount"]) == ("1", "4.00")
    assert (shown["refunds.state.succeeded"], shown["refunds.state.failed"]) == ("1", "1")

    links = figure_links(page)
    counted = {key: href for key, href in links.items()
               if not key.startswith("bills.") and key != "refunds.succeeded_amount"}
    assert len(counted) >= 30
    for key, href in counted.items():
        assert _listed(client, href) == int(shown[key]), (key, href)
    bars = bar_links(page)
    assert len(bars) >= 12
    for href, title, count in bars:
        if "/billreport/" not in href:
            assert _listed(client, href) == count, (title, href)
    assert links["events.dead"] == "/admin/payment/paymentevent/?state__exact=dead"


def test_anonymous_and_non_staff_are_sent_to_the_admin_sign_in() -> None:
    anonymous = Client().get(URL)
    member = _staff(VIEW_ALL, is_staff=False).get(URL)

    for response in (anonymous, member):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=/admin/dashboard/")


def test_the_dashboard_only_reads() -> None:
    client = _staff(["payment.view_paymentevent"])

    assert client.post(URL, {"state": "dead"}).status_code == 405
    assert client.head(URL).status_code == 200


def test_staff_without_the_events_permission_is_refused() -> None:
    client = _staff(["shop.view_orderinfo", "payment.view_payment"])

    assert client.get(URL).status_code == 403
    index = client.get("/admin/")
    assert index.status_code == 200 and b'id="dashboard-link"' not in index.content


def test_the_admin_index_leads_to_the_dashboard() -> None:
    client = _staff(["payment.view_paymentevent"])

    index = client.get("/admin/").content.decode()

    assert f'href="{URL}" id="dashboard-link"' in index


def test_lists_the_user_may_not_open_are_not_linked() -> None:
    window = queries.dashboard_window()
    payment = paid_order_create(paid_at=window.start + H)
    refund_create(payment=payment, state="sent", requested_at=window.start + H)
    client = _staff(["payment.view_paymentevent", "payment.view_payment"])

    page = client.get(URL, {"ignored": "x" * 300}).content.decode()

    assert "/admin/payment/refund/" not in page
    assert "/admin/payment/paymentattempt/" not in page
    assert "/admin/payment/payment/?" in page


def test_the_dashboard_shows_nothing_the_lists_hide() -> None:
    """Staff with only the events' permission see the events' figures, not the refund amounts,
    bill findings, payments or reconciliation counts whose lists answer them 403."""
    window = queries.dashboard_window()
    payment = paid_order_create(paid_at=window.start + H)
    refund = refund_create(payment=payment, state="succeeded", requested_at=window.start + H)
    events_only = _staff(["payment.view_paymentevent"])

    page = events_only.get(URL).content.decode()
    shown = figures(page)

    assert "events.total" in shown or any(k.startswith("events.") for k in shown)
    hidden = [k for k in shown if k.split(".")[0] in (
        "refunds", "bills", "payments", "time_to_paid", "reconciliation")]
    assert hidden == []
    assert 'id="section-refunds"' not in page and 'id="section-reconciliation"' not in page
    assert "errors.refunds" not in shown and "errors.reconciliation" not in shown
    for path in ("refund", "billreport", "payment", "paymentattempt"):
        assert events_only.get(f"/admin/payment/{path}/").status_code == 403

    # Each permission brings its own figures back.
    everything = _staff(["payment.view_paymentevent", "payment.view_refund",
                         "payment.view_billreport", "payment.view_payment",
                         "payment.view_paymentattempt"])
    shown = figures(everything.get(URL).content.decode())
    assert shown["refunds.succeeded_amount"] == str(refund.amount)
    assert "bills.findings" in shown and "payments.total" in shown


SQLITE_SCRIPT = """
import json, re
from datetime import timedelta
from django.test import Client
from django.utils import timezone
from backoffice.dashboard import queries
from tests.factories import StaffFactory, event_create, paid_order_create
window = queries.dashboard_window()
for seconds in (10, 20, 30, 40, 100):
    at = window.start + timedelta(hours=4)
    paid_order_create(source="return", paid_at=at, link_at=at - timedelta(seconds=seconds))
event_create(state="dead", received_at=window.start + timedelta(hours=1))
client = Client(HTTP_HOST="127.0.0.1")
client.force_login(StaffFactory(is_superuser=True))
response = client.get("/admin/dashboard/")
page = response.content.decode()
shown = dict(re.findall(r'data-figure="([^"]+)" data-value="([^"]*)"', page))
print(json.dumps({"status": response.status_code, "figures": shown}))
"""


@pytest.mark.slow
def test_dashboard_works_on_sqlite_as_make_run_serves_it(tmp_path: Path) -> None:
    env = process_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      CELERY_BROKER_URL="filesystem://", CELERY_BROKER_FOLDER=str(tmp_path))
    subprocess.run([sys.executable, "manage.py", "migrate", "--skip-checks", "-v", "0"],
                   cwd=ROOT, env=env, check=True, timeout=120)

    done = subprocess.run([sys.executable, "manage.py", "shell", "-v", "0", "-c",
                           SQLITE_SCRIPT],
                          cwd=ROOT, env=env, check=True, timeout=120, capture_output=True,
                          text=True)

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    shown = result["figures"]
    assert (shown["payments.total"], shown["payments.source.return"]) == ("5", "5")
    assert (shown["time_to_paid.p50"], shown["time_to_paid.p95"]) == ("30.000", "88.000")
    assert shown["events.dead"] == "1"
