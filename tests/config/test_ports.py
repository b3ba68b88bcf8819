"""Moving `make run`'s ports moves every URL that names them: the shop's return and
notification URLs (what pay links send Alipay and the buyer back to), the sandbox's gateway,
and the banner."""
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

MOVED = {"WEB_BIND": "127.0.0.1:8001", "SANDBOX_PORT": "8091"}


def _clean_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEB_BIND", "SANDBOX_PORT", "SANDBOX_HOST", "SHOP_URL", "SANDBOX_URL",
                        "ALIPAY_RETURN_URL", "ALIPAY_NOTIFY_URL", "ALIPAY_GATEWAY")}
    return {**env, "DJANGO_SETTINGS_MODULE": "config.settings", **changes}


@pytest.mark.slow
@pytest.mark.parametrize(("moved", "expected"), [
    ({}, ["http://127.0.0.1:8000/pay_success.html",
          "http://127.0.0.1:8000/payment/alipay/notify/", "http://127.0.0.1:8090/gateway.do"]),
    (MOVED, ["http://127.0.0.1:8001/pay_success.html",
             "http://127.0.0.1:8001/payment/alipay/notify/", "http://127.0.0.1:8091/gateway.do"]),
    ({"WEB_BIND": "0.0.0.0:8002"}, ["http://127.0.0.1:8002/pay_success.html",
                                    "http://127.0.0.1:8002/payment/alipay/notify/",
                                    "http://127.0.0.1:8090/gateway.do"]),
])
def test_the_urls_follow_the_ports(moved: dict[str, str], expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings "
         "as s; print(s.ALIPAY_RETURN_URL, s.ALIPAY_NOTIFY_URL, s.ALIPAY_GATEWAY)"],
        cwd=ROOT, env=_clean_env(**moved), capture_output=True, text=True, timeout=60,
        check=True)
    assert result.stdout.split() == expected


@pytest.mark.slow
def test_the_banner_follows_the_ports() -> None:
    result = subprocess.run(["make", "-n", "run"], cwd=ROOT, env=_clean_env(**MOVED),
                            capture_output=True, text=True, timeout=60, check=True)
    assert "Storefront : http://127.0.0.1:8001/" in result.stdout
    assert "Sandbox    : http://127.0.0.1:8091/" in result.stdout
