"""The harness's children: measured while they run, all stopped at the end."""

import re
import sys
import time
from pathlib import Path

import pytest

from bench.procs import (
    ProcessError,
    ProcessGroup,
    cpu_seconds,
    rss_kib,
    tree_cpu_seconds,
    tree_rss_kib,
    wait_log,
)

SLEEPER = "import subprocess, sys, time; print('up', flush=True); "


def test_stop_all_ends_a_child_and_its_own_children(tmp_path: Path) -> None:
    group = ProcessGroup()
    code = (
        SLEEPER + "c = subprocess.Popen([sys.executable, '-c', "
        "'import time; print(\"grandchild ready\", flush=True); time.sleep(30)']); "
        "print('child', c.pid, flush=True); time.sleep(30)"
    )
    log = tmp_path / "parent.log"
    try:
        parent = group.start([sys.executable, "-c", code], log)
        (found,) = wait_log(log, re.compile(r"child (\d+)"), parent)
        child = int(found.group(1))
        # Measure only once the grandchild has finished starting: a starting
        # interpreter's memory grows between one reading and the next.
        wait_log(log, re.compile(r"grandchild ready"), parent)
        assert rss_kib(parent.pid) > 0
        assert tree_rss_kib(parent.pid) >= rss_kib(parent.pid) + rss_kib(child) > rss_kib(child)
    finally:
        group.stop_all()
    assert parent.returncode is not None
    assert _gone_within(child, 5.0)


def _gone_within(pid: int, seconds: float) -> bool:
    # The signal reached the whole group; its delivery to the grandchild is asynchronous.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def test_a_child_that_exits_early_is_reported_with_its_last_line(tmp_path: Path) -> None:
    group = ProcessGroup()
    log = tmp_path / "dies.log"
    try:
        proc = group.start([sys.executable, "-c", "print('bad config: port 99999'); exit(2)"], log)
        with pytest.raises(ProcessError, match=r"exited with 2: bad config: port 99999"):
            wait_log(log, re.compile("listening"), proc)
    finally:
        group.stop_all()


def test_a_gone_process_has_no_rss() -> None:
    assert rss_kib(2**22 + 1) == 0  # above the kernel's pid_max ceiling


def test_cpu_time_of_a_tree_counts_a_busy_grandchild(tmp_path: Path) -> None:
    group = ProcessGroup()
    busy = (
        "import time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "time.sleep(30)"
    )
    code = (
        SLEEPER + f"c = subprocess.Popen([sys.executable, '-c', {busy!r}]); "
        "print('child', c.pid, flush=True); time.sleep(30)"
    )
    log = tmp_path / "cpu.log"
    try:
        parent = group.start([sys.executable, "-c", code], log)
        (found,) = wait_log(log, re.compile(r"child (\d+)"), parent)
        child = int(found.group(1))
        deadline = time.monotonic() + 10
        while cpu_seconds(child) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds(child) >= 0.3
        assert tree_cpu_seconds((parent.pid,)) >= cpu_seconds(parent.pid) + 0.3
    finally:
        group.stop_all()
    assert cpu_seconds(2**31 - 1) == 0.0  # no such process
