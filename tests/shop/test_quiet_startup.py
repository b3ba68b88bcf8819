"""django-axes says nothing when a process starts: no "AXES: BEGIN ..." line on every
manage.py command, worker and web process."""
import logging
import subprocess
import sys

import django
import pytest
from axes.apps import AppConfig as AxesAppConfig

from tests.support import ROOT


def test_axes_logs_no_banner_when_it_starts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AxesAppConfig, "initialized", False)
    with caplog.at_level(logging.DEBUG, logger="axes"):
        AxesAppConfig.initialize()
    assert "AXES:" not in caplog.text


@pytest.mark.slow
def test_a_manage_py_command_prints_only_its_own_output() -> None:
    result = subprocess.run([sys.executable, "manage.py", "version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert "AXES:" not in result.stdout + result.stderr
    assert result.stdout.strip() == django.get_version()
    assert result.stderr == ""
