"""`make run`: honcho with the Procfile and the embedded defaults (SQLite, the filesystem
broker). Ctrl-C stops every process within honcho's grace period, quietly."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ManagedProcess, free_port, process_env, python_args, wait_for_port

# honcho sends SIGTERM, waits this long, then SIGKILLs whatever is left.
HONCHO_GRACE = 5.0


def _make_run_env(tmp_path: Path, keys: Path) -> dict[str, str]:
    """make run's environment, with its files in tmp_path and its ports free ones."""
    env = {name: value for name, value in process_env().items()
           if not name.startswith(("DATABASE_", "CELERY_", "PAYMENT_REDIS"))}
    bin_dir = Path(sys.executable).parent
    env.update({
        "PATH": f"{bin_dir}:{env.get('PATH', '')}",
        "no_proxy": "127.0.0.1,localhost",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_FOLDER": str(tmp_path / "broker"),
        "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "celerybeat-schedule"),
        "METRICS_DIR": str(tmp_path / "metrics"),
        "WEB_BIND": f"127.0.0.1:{free_port()}",
        "SANDBOX_PORT": str(free_port()),
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(keys / "app_private_key.pem"),
        "ALIPAY_PUBLIC_KEY_PATH": str(keys / "alipay_public_key.pem"),
        "ALIPAY_SANDBOX_PRIVATE_KEY": str(keys / "alipay_private_key.pem"),
        "ALIPAY_SANDBOX_APP_PUBLIC_KEY": str(keys / "app_public_key.pem"),
        "ALIPAY_SANDBOX_STORE": str(tmp_path / "alipay_sandbox.sqlite3"),
    })
    return env


@pytest.mark.slow
def test_ctrl_c_stops_every_process_within_honchos_grace(
    tmp_path: Path, dev_keys: Path, log_dir: Path
) -> None:
    env = _make_run_env(tmp_path, dev_keys)
    subprocess.run(python_args("manage.py", "migrate", "-v0"), env=env, check=True, timeout=120)
    honcho = ManagedProcess(
        "make-run", [str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile"],
        env, log_dir,
    ).start()
    try:
        honcho.wait_log("ready.", timeout=60)  # the worker's pool is up
        honcho.wait_log("beat: Starting", timeout=30)
        wait_for_port(int(env["WEB_BIND"].rpartition(":")[2]))
        wait_for_port(int(env["SANDBOX_PORT"]))
        assert honcho.proc is not None
        # Ctrl-C: the terminal signals honcho's whole process group.
        os.killpg(honcho.proc.pid, signal.SIGINT)
        stopped_at = time.monotonic()
        honcho.proc.wait(HONCHO_GRACE + 15)
        took = time.monotonic() - stopped_at
    finally:
        honcho.kill()

    output = honcho.log_text()
    assert "SIGKILL" not in output, output[-3000:]
    assert took < HONCHO_GRACE, f"{took:.1f} s\n{output[-3000:]}"
    assert honcho.proc.returncode == 130  # `make run` takes 130 as the normal way to stop
    # Nothing that reads as a failure either ("Error while closing socket" is gunicorn's).
    noisy = [line for line in output.splitlines()
             if " ERROR " in line or "ERROR/" in line or "Traceback" in line or "Error" in line]
    assert not noisy, "\n".join(noisy)
