"""The chaos run (bench/chaos.py) for two minutes with a fixed seed: mixed traffic while
processes are killed, PostgreSQL and Redis restarted and the gateway misbehaves, then every
invariant checked against the sandbox's books."""
import re
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT, free_port

INVARIANTS = 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_minutes_of_chaos_keep_the_books_right() -> None:
    process = subprocess.Popen(
        [sys.executable, "bench/chaos.py", "--seconds", "120", "--seed", "1",
         "--redis-port", str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the run stops its processes and temporary files
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the chaos run did not end in time:\n{output[-5000:]}")
    rows = re.findall(r"^\| (.+?) \| (\d+) \| (\d+) \|$", output, re.MULTILINE)
    assert len(rows) == INVARIANTS, output[-5000:]
    for name, checked, violations in rows:
        assert int(checked) > 0, f"{name}: nothing checked\n{output[-5000:]}"
        assert int(violations) == 0, f"{name}: {violations} violations\n{output[-5000:]}"
    injected = re.search(r"^\| total \| (\d+) \|$", output, re.MULTILINE)
    assert injected and int(injected.group(1)) > 0, output[-5000:]
    assert process.returncode == 0, output[-5000:]
