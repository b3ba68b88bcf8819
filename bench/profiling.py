"""Where a run's CPU goes: CPU seconds per group of processes, and py-spy samples.

`CpuMeter` reads utime + stime of every process of each group (a process tree, or every
process with a given command name such as `postgres`) before and after a load, so that a
benchmark can divide by its request count. `spy_start`/`spy_summary` run `py-spy record` on
a process tree in raw (collapsed-stack) form, only of threads holding the GIL (Python's own
CPU, not its waits), and print the functions that held the most samples, inclusive and by
themselves.
"""
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def named(name: str) -> list[int]:
    """Every process whose command name is `name` (all of PostgreSQL's backends, say)."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and _comm(int(e.name)) == name]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            # utime and stime are fields 14 and 15 of stat; [0] here is field 3.
            seconds[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


class CpuMeter:
    """CPU seconds spent by each group between start() and stop().

    A process that ends during the window loses its share; one that starts counts from zero.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pids()) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        spent = {}
        for name, pids in self.groups.items():
            after = cpu_seconds(pids())
            before = self.before.get(name, {})
            spent[name] = sum(value - before.get(pid, 0.0) for pid, value in after.items())
        return spent


def per_request_text(spent: dict[str, float], requests: int) -> str:
    """'web 1.2, worker 3.4, ... = 5.6 ms of CPU per request'."""
    if requests <= 0:
        return "no requests"
    parts = [f"{name} {seconds * 1000 / requests:.2f}" for name, seconds in spent.items()]
    total = sum(spent.values()) * 1000 / requests
    return f"{', '.join(parts)} = {total:.2f} ms of CPU per request"


def spy_start(pid: int, output: Path, seconds: int, rate: int = 200) -> subprocess.Popen[bytes]:
    """py-spy on a process and its children for `seconds`, collapsed stacks into `output`."""
    spy = Path(os.environ.get("PY_SPY", Path(__file__).resolve().parent.parent
                              / ".venv" / "bin" / "py-spy"))
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
         "--rate", str(rate), "--duration", str(seconds), "--format", "raw",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spy_summary(output: Path, top: int = 25) -> str:
    """The functions holding most samples: inclusive (on the stack) and self (at its top)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")
                  if " (" in frame else frame for frame in stack.split(";")[1:]]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        return f"{output.name}: no samples"
    lines = [f"{output.name}: {total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  {title}:")
        lines += [f"    {count * 100 / total:5.1f}%  {frame}"
                  for frame, count in counter.most_common(top)]
    return "\n".join(lines)
