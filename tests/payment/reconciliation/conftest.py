"""The test gateway that serves crafted bills (crafted_bills.py), for the bill tests."""
from collections.abc import Iterator

import pytest

from alipay_sandbox.client import SandboxControl
from tests.payment.reconciliation.crafted_bills import BillHost


@pytest.fixture
def bill_host(sandbox: SandboxControl) -> Iterator[BillHost]:
    """The test gateway's file host; the sandbox names none of its URLs afterwards."""
    host = BillHost()
    yield host
    sandbox.clear_faults()
    host.close()
