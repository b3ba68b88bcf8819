"""Every entry the project ships answers the intake and /metrics alike: the Procfile's ASGI
server, the WSGI module under gunicorn and `manage.py runserver` (the last two serve the
same ASGI apps through Django, infra/asgi_bridge.py)."""
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import (
    ManagedProcess,
    free_port,
    process_fixture,
    procfile_command,
    python_args,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)

ENTRIES = {
    "asgi": lambda port: procfile_command("web"),
    "wsgi": lambda port: python_args("-m", "gunicorn", "config.wsgi", "--bind",
                                     f"127.0.0.1:{port}", "--workers", "1"),
    "runserver": lambda port: python_args("manage.py", "runserver", "--noreload",
                                          f"127.0.0.1:{port}"),
}


@process_fixture(scope="module")
def entries(worker_env: dict[str, str], log_dir: Path) -> Iterator[dict[str, str]]:
    started: list[ManagedProcess] = []
    urls: dict[str, str] = {}
    for name, command in ENTRIES.items():
        port = free_port()
        env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"}
        started.append(ManagedProcess(f"entry-{name}", command(port), env, log_dir).start())
        wait_for_port(port, timeout=60)
        urls[name] = f"http://127.0.0.1:{port}"
    yield urls
    for process in started:
        process.stop()


def _answers(base: str) -> dict[str, tuple[int, str, str]]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    requests_made = {
        "metrics": requests.get(f"{base}/metrics", timeout=30),
        "return-malformed": requests.put(f"{base}/payment/status/?out_trade_no=1", timeout=10),
        "return-too-large": requests.put(f"{base}/payment/status/", data=b"a=" + b"x" * 70_000,
                                         headers=form, timeout=10),
        "return-get": requests.get(f"{base}/payment/status/", timeout=10),
        "notify-junk": requests.post(f"{base}/payment/alipay/notify/", data={"a": "b"},
                                     timeout=10),
        "notify-json": requests.post(f"{base}/payment/alipay/notify/", data="{}", timeout=10,
                                     headers={"Content-Type": "application/json"}),
        "notify-get": requests.get(f"{base}/payment/alipay/notify/", timeout=10),
    }
    return {
        name: (r.status_code, r.headers.get("Content-Type", "").split(";")[0],
               r.text if name != "metrics" else str("shop_metrics_source_up" in r.text))
        for name, r in requests_made.items()
    }


def test_every_entry_answers_the_intake_and_metrics_alike(entries: dict[str, str]) -> None:
    answers = {name: _answers(url) for name, url in entries.items()}

    assert answers["asgi"] == answers["wsgi"] == answers["runserver"], answers
    asgi = answers["asgi"]
    assert asgi["metrics"][0] == 200 and asgi["metrics"][2] == "True"
    assert asgi["return-malformed"][:2] == (400, "application/json")
    assert asgi["return-too-large"][:2] == (413, "application/json")
    assert asgi["return-get"][0] == 405
    assert asgi["notify-junk"] == (400, "text/plain", "fail")
    assert asgi["notify-json"] == (400, "text/plain", "fail")
    assert asgi["notify-get"][0] == 405
