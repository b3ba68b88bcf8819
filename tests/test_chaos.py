"""The chaos run (bench/chaos.py) for two minutes with a fixed seed: mixed traffic while
processes are killed, PostgreSQL and Redis restarted and the gateway misbehaves, then every
invariant checked against the sandbox's books.

It needs nothing the other tests use (its own PostgreSQL cluster, Redis, sandbox, web and
workers on free ports), so when the suite selects it, it starts as soon as collection ends
(conftest.py; under pytest-xdist, when its test starts in the process given it) and runs beside
the other tests at a lower CPU priority (`nice`): it takes the CPU they leave while they wait
on their processes, without slowing their timing. The test itself waits for its end and reads
its report."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import ROOT, free_port

INVARIANTS = 6
NODE_ID = "tests/test_chaos.py::test_two_minutes_of_chaos_keep_the_books_right"
# Below the other tests: the run's processes get the CPU those leave.
NICENESS = 10


class ChaosRun:
    """The one chaos run of a session, its output in a file (a pipe could fill and stop it)."""

    def __init__(self) -> None:
        descriptor, name = tempfile.mkstemp(prefix="chaos-", suffix=".log")
        self.output = Path(name)
        with os.fdopen(descriptor, "w") as sink:
            self.process = subprocess.Popen(
                ["nice", "-n", str(NICENESS), sys.executable, "bench/chaos.py",
                 "--seconds", "120", "--seed", "1", "--redis-port", str(free_port())],
                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True,
            )
        self.started = time.monotonic()

    def wait(self, timeout: float) -> tuple[int | None, str]:
        """Its exit code (None if it did not end in time: then stopped) and its output."""
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            code = None
        return code, self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # it stops its processes and files
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


_run: ChaosRun | None = None


def chaos_start() -> ChaosRun:
    global _run
    if _run is None:
        _run = ChaosRun()
    return _run


def chaos_stop() -> None:
    """At the session's end: a run whose test did not wait for it (-x, Ctrl-C) is stopped."""
    if _run is not None:
        _run.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_minutes_of_chaos_keep_the_books_right() -> None:
    run = chaos_start()
    code, output = run.wait(timeout=max(60.0, 540 - (time.monotonic() - run.started)))

    assert code is not None, f"the chaos run did not end in time:\n{output[-5000:]}"
    rows = re.findall(r"^\| (.+?) \| (\d+) \| (\d+) \|$", output, re.MULTILINE)
    assert len(rows) == INVARIANTS, output[-5000:]
    for name, checked, violations in rows:
        assert int(checked) > 0, f"{name}: nothing checked\n{output[-5000:]}"
        assert int(violations) == 0, f"{name}: {violations} violations\n{output[-5000:]}"
    injected = re.search(r"^\| total \| (\d+) \|$", output, re.MULTILINE)
    assert injected and int(injected.group(1)) > 0, output[-5000:]
    assert code == 0, output[-5000:]
    run.output.unlink()  # kept when the run failed, for a closer look
