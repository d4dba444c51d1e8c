"""Resource limits for the processes an agent starts: cgroups v2 where the node
delegates a writable subtree to us, otherwise POSIX rlimits.

* cgroups v2: one child group per instance under the agent's own group, with
  ``memory.max`` = the memory request and ``cpu.max`` = the CPU request as a quota
  per 100 ms period; the child joins it in ``preexec_fn``, before ``exec``, so no
  instruction of the app runs outside it.
* rlimits (no unified hierarchy, or no delegation): ``RLIMIT_AS`` = the memory
  request.  A CPU *rate* cannot be expressed as an rlimit: ``RLIMIT_CPU`` caps the
  total CPU seconds of a process and would kill a healthy long-lived service, so it
  is set only when the spec asks for a CPU-time budget, and the CPU request is then
  not enforced as a rate (the status says so).

``describe()`` is what the agent reports as the instance's ``limits``.  This room
touches only /sys/fs/cgroup and the rlimits of the child; it starts nothing.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class LimitError(OSError):
    """The limits could not be set up for an instance."""


@dataclass(frozen=True, slots=True)
class Request:
    cpu_millis: int
    memory_bytes: int
    cpu_seconds: int | None = None  # RLIMIT_CPU budget, only in rlimit mode


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The unified-hierarchy path of this process (the ``0::`` line), if any."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class Cgroups:
    """A delegated cgroups v2 subtree: ``<own group>/meshcontrol-agent-<pid>``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT, membership: str | None = None) -> Cgroups | None:
        """A usable subtree, or None when the node is not cgroups v2 or does not
        delegate cpu and memory control to us.  ``membership`` stands for the text
        of /proc/self/cgroup."""
        try:
            if not (root / "cgroup.controllers").is_file():
                return None
            if membership is None:
                membership = Path("/proc/self/cgroup").read_text()
            path = own_cgroup(membership)
            if path is None:
                return None
            mine = root / path.lstrip("/")
            base = mine / f"meshcontrol-agent-{os.getpid()}"
            base.mkdir(exist_ok=True)
            available = (base / "cgroup.controllers").read_text().split()
            if not {"cpu", "memory"} <= set(available):
                base.rmdir()
                return None
            (base / "cgroup.subtree_control").write_text("+cpu +memory")
            return cls(base)
        except OSError:
            return None

    def prepare(self, name: str, request: Request) -> Path:
        group = self.base / name
        try:
            group.mkdir(exist_ok=True)
            if request.memory_bytes:
                (group / "memory.max").write_text(str(request.memory_bytes))
            if request.cpu_millis:
                quota = max(request.cpu_millis * PERIOD_US // 1000, 1000)
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        except OSError as exc:
            raise LimitError(f"cgroup {group}: {exc}") from None
        return group

    def release(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.base / name).rmdir()


class Limits:
    """How this node enforces requests; ``cgroups`` None means rlimits."""

    def __init__(self, cgroups: Cgroups | None) -> None:
        self.cgroups = cgroups

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT, membership: str | None = None) -> Limits:
        return cls(Cgroups.detect(root, membership))

    @property
    def mode(self) -> str:
        return "cgroup-v2" if self.cgroups is not None else "rlimit"

    def describe(self, request: Request) -> str:
        if self.cgroups is not None:
            return f"cgroup-v2: memory.max={request.memory_bytes} cpu={request.cpu_millis}m"
        cpu = (
            f"RLIMIT_CPU={request.cpu_seconds}s"
            if request.cpu_seconds is not None
            else f"cpu {request.cpu_millis}m not enforced"
        )
        return f"rlimit: RLIMIT_AS={request.memory_bytes}; {cpu}"

    def preexec(self, name: str, request: Request) -> Callable[[], None]:
        """What the child runs between fork and exec (no allocation-heavy work there)."""
        if self.cgroups is not None:
            procs = str(self.cgroups.prepare(name, request) / "cgroup.procs")

            def join() -> None:
                fd = os.open(procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # "0" moves the writing process itself
                finally:
                    os.close(fd)

            return join
        memory, cpu_seconds = request.memory_bytes, request.cpu_seconds

        def restrict() -> None:
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if cpu_seconds is not None:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))

        return restrict

    def release(self, name: str) -> None:
        if self.cgroups is not None:
            self.cgroups.release(name)
