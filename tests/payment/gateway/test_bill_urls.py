"""Which bill URLs the gateway fetches, and how (payment.gateway.bill_url_checked)."""
from typing import Any

import pytest

from payment import gateway

ALIPAY_URL = ("http://dwbillcenter.alipay.com/downloadBillFile.resource?bizType=trade"
              "&userId=20880000000000010156&fileType=csv.zip&bizDates=20260101"
              "&downloadFileName=20880000000000010156_20260101.csv.zip&fileId=%2Ftrade%2F1")


@pytest.fixture
def production(settings: Any) -> None:
    settings.PRODUCTION = True
    settings.BILL_DOWNLOAD_HOSTS = ["dwbillcenter.alipay.com"]


@pytest.mark.usefixtures("production")
def test_bill_url_of_alipay_is_fetched_over_https_in_production() -> None:
    # Alipay's answers (and EasySDK's tests) name http://dwbillcenter.alipay.com/...
    assert gateway.bill_url_checked(ALIPAY_URL).url == "https" + ALIPAY_URL[4:]
    upper = gateway.bill_url_checked("https://DWBILLCENTER.alipay.com:443/x.zip?a=1")
    assert (upper.scheme, upper.host, upper.port, upper.request_uri) == (
        "https", "dwbillcenter.alipay.com", 443, "/x.zip?a=1")


@pytest.mark.usefixtures("production")
@pytest.mark.parametrize("url", [
    "https://dwbillcenter.alipay.com.evil.example/bill.zip",
    "https://dwbillcenter.alipay.com@evil.example/bill.zip",
    "https://user:secret@dwbillcenter.alipay.com/bill.zip",
    "http://127.0.0.1:8000/metrics",
    "ftp://dwbillcenter.alipay.com/bill.zip",
    "file:///etc/passwd",
    "//dwbillcenter.alipay.com/bill.zip",
    "",
])
def test_bill_url_off_the_allow_list_is_refused(url: str) -> None:
    with pytest.raises(gateway.BillDownloadRefused) as refused:
        gateway.bill_url_checked(url)
    assert refused.value.kind == "url"


def test_bill_url_of_the_sandbox_stays_http_outside_production(settings: Any) -> None:
    settings.PRODUCTION = False
    settings.BILL_DOWNLOAD_HOSTS = ["dwbillcenter.alipay.com", "127.0.0.1"]
    assert gateway.bill_url_checked("http://127.0.0.1:8090/bills/t.zip").url == (
        "http://127.0.0.1:8090/bills/t.zip")
