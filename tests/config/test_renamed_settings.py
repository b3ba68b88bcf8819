"""Settings renamed with their unit: the new environment variable is read; the old one, set
alone, still takes effect for one release and is reported as deprecated."""
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import environ
import pytest
from django.conf import settings

from infra import envvars
from tests.support import ROOT

RENAMED = {
    "PAYMENT_STATUS_WAIT": "RETURN_WAIT_SECONDS",
    "PAYMENT_STATUS_RATE": "RETURN_RATE",
    "RECONCILE_AFTER": "RECONCILE_AFTER_SECONDS",
    "ORDER_PAY_TIMEOUT": "ORDER_PAY_TIMEOUT_SECONDS",
    "PAYMENT_CLAIM_LEASE": "PAYMENT_CLAIM_LEASE_SECONDS",
    "REFUND_CONFIRM_DELAY": "REFUND_CONFIRM_DELAY_SECONDS",
    "PAYMENT_SWEEP_INTERVAL": "PAYMENT_SWEEP_INTERVAL_SECONDS",
    "RECONCILE_INTERVAL": "RECONCILE_INTERVAL_SECONDS",
    "PAYMENT_RETENTION_INTERVAL": "PAYMENT_RETENTION_INTERVAL_SECONDS",
    "ORDER_EXPIRE_INTERVAL": "ORDER_EXPIRE_INTERVAL_SECONDS",
    "ALIPAY_TIMEOUT": "ALIPAY_TIMEOUT_SECONDS",
    "RECONCILE_CONCURRENCY": "GATEWAY_CONCURRENCY",
}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> environ.Env:
    monkeypatch.setattr(envvars, "_OLD_NAMES_USED", {})
    for old, new in RENAMED.items():
        monkeypatch.delenv(old, raising=False)
        monkeypatch.delenv(new, raising=False)
    return environ.Env()


def test_the_old_variable_set_alone_takes_effect_and_warns_once(
    fresh: environ.Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RECONCILE_AFTER", "7")

    with pytest.warns(DeprecationWarning, match="RECONCILE_AFTER .*RECONCILE_AFTER_SECONDS"):
        value = envvars.env_renamed(fresh.float, "RECONCILE_AFTER_SECONDS",
                                    old="RECONCILE_AFTER", default=120.0)
    assert value == 7.0
    with caplog.at_level(logging.WARNING, logger="infra.envvars"):
        envvars.old_names_log()
    assert [record.getMessage() for record in caplog.records] == [
        "environment variable RECONCILE_AFTER is deprecated and goes in the next release: set "
        "RECONCILE_AFTER_SECONDS instead (its value is used meanwhile)"
    ]

    # Read again (a second settings module, say): the same value, and no second warning.
    with warnings_recorded() as seen:
        assert envvars.env_renamed(fresh.float, "RECONCILE_AFTER_SECONDS",
                                   old="RECONCILE_AFTER", default=120.0) == 7.0
    assert not seen


def test_the_new_variable_wins_and_nothing_is_said(
    fresh: environ.Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYMENT_STATUS_RATE", "5/minute")
    monkeypatch.setenv("RETURN_RATE", "9/minute")
    with warnings_recorded() as seen:
        assert envvars.env_renamed(fresh.str, "RETURN_RATE", old="PAYMENT_STATUS_RATE",
                                   default="120/minute") == "9/minute"
        assert envvars.env_renamed(fresh.float, "ALIPAY_TIMEOUT_SECONDS",
                                   old="ALIPAY_TIMEOUT", default=10.0) == 10.0
    assert not seen
    assert envvars.old_names_used() == {}


def test_settings_carry_only_the_new_names() -> None:
    # Only the environment variables keep their old names for a release, not the settings.
    for old, new in RENAMED.items():
        assert hasattr(settings, new), new
        assert not hasattr(settings, old), old
    beat = {job["task"]: job["schedule"] for job in settings.CELERY_BEAT_SCHEDULE.values()}
    assert beat["payment.tasks.events_sweep_task"] == settings.PAYMENT_SWEEP_INTERVAL_SECONDS
    assert beat["payment.tasks.orders_expire_dispatch_task"] == (
        settings.ORDER_EXPIRE_INTERVAL_SECONDS)


@pytest.mark.slow
def test_a_process_started_with_an_old_name_uses_it_and_logs_a_warning() -> None:
    env = {name: value for name, value in os.environ.items()
           if name not in RENAMED and name not in RENAMED.values()}
    env.update({"ORDER_PAY_TIMEOUT": "600", "PAYMENT_STATUS_WAIT": "1.5",
                "RECONCILE_CONCURRENCY": "12", "LOG_FORMAT": "text"})
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(settings.ORDER_PAY_TIMEOUT_SECONDS, settings.RETURN_WAIT_SECONDS, "
         "settings.GATEWAY_CONCURRENCY)"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.splitlines()[-1] == "600.0 1.5 12"
    output = result.stdout + result.stderr
    for old in ("ORDER_PAY_TIMEOUT", "PAYMENT_STATUS_WAIT", "RECONCILE_CONCURRENCY"):
        assert output.count(f"WARNING infra.envvars environment variable {old} is deprecated") == 1


@contextmanager
def warnings_recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside, whatever the filters say."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
