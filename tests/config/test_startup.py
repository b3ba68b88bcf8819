"""Start-up refuses to run without its key files, with one line naming the path."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, process_env


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["manage.py", "check"],
        ["-c", "import config.wsgi"],
    ],
    ids=["manage-check", "wsgi"],
)
def test_missing_key_file_stops_startup_with_one_clear_line(
    command: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "app_private_key.pem"
    env = process_env(ALIPAY_APP_PRIVATE_KEY_PATH=str(missing),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if str(missing) in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_models_and_migrations_agree(tmp_path: Path) -> None:
    env = process_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run",
         "--skip-checks"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
