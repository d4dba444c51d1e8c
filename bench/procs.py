"""Child processes of the benchmark: start, wait until they serve, measure, stop.

Every child runs in its own session so that a Ctrl-C in the terminal reaches
only the harness, which then stops the children in order (``ProcessGroup``);
nothing here is left running when the harness exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ProcessError(Exception):
    """A child did not start, or did not start serving in time."""


def free_port() -> int:
    """A port the OS considers free right now, for programs that cannot be
    told to bind port 0 and report it (nginx, HAProxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(f"exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ProcessError(f"nothing listening on port {port} after {timeout_s:.0f}s")


def wait_log(
    path: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes], timeout_s: float = 10.0
) -> list[re.Match[str]]:
    """Wait until ``pattern`` is found in the log file a child writes, and return
    every match seen so far (a process may print several listening lines)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        matches = list(pattern.finditer(text))
        if matches:
            return matches
        if proc.poll() is not None:
            lines = [line for line in text.splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "(no output)"
            raise ProcessError(f"exited with {proc.returncode}: {last}")
        time.sleep(0.05)
    raise ProcessError(f"no line matching {pattern.pattern!r} after {timeout_s:.0f}s")


def rss_kib(pid: int) -> int:
    """VmRSS of one process; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and its descendants: nginx's master and worker, or a
    sidecar's supervisor and workers.  Shared pages count once per process."""
    return rss_kib(pid) + sum(tree_rss_kib(child) for child in children(pid))


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def tree_cpu_seconds(pids: tuple[int, ...]) -> float:
    """CPU time of processes and their descendants (a sidecar's workers,
    nginx's worker, the second hop of a two-sidecar target)."""
    return sum(cpu_seconds(pid) + tree_cpu_seconds(tuple(children(pid))) for pid in pids)


def placement() -> dict[str, set[int]] | None:
    """The load generator and the origin on the first CPU this process may
    use, the target on the others; None with a single CPU.  Each target then
    runs on a core of its own every time, instead of wherever the scheduler
    puts three busy processes on two cores, which moves a run by 10-30%."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {"driver": {cpus[0]}, "target": set(cpus[1:])}


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that confines a child (and all it starts) to ``cpus``."""
    if cpus is None:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


class ProcessGroup:
    """The children of one benchmark run, stopped together (last started, first
    stopped) by ``stop_all``, which is safe to call more than once."""

    def __init__(self, pin: bool = False) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self.placement = placement() if pin else None

    def cpus(self, role: str) -> set[int] | None:
        """The CPUs of ``role`` (``driver``: wrk and the origin; ``target``:
        what is measured), or None when nothing is pinned."""
        return self.placement.get(role) if self.placement is not None else None

    def start(
        self,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        role: str = "target",
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                    preexec_fn=pinned(self.cpus(role)),
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {argv[0]}: {exc}") from None
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        if proc.poll() is None:
            # The whole session: nginx's worker must not outlive its master.
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_s)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_pid(self, pid: int) -> None:
        for proc in [p for p in self._procs if p.pid == pid]:
            self.stop(proc)

    def stop_all(self) -> None:
        while self._procs:
            self.stop(self._procs[-1])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
