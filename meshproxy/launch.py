"""``meshproxy run`` as a child process: start it, learn the ports it bound,
keep its last lines, stop it.

Used by whatever runs sidecars of its own (the node agent, the demo).  The
child runs in its own session, so a Ctrl-C aimed at the parent does not reach
it; ``Sidecar.stop`` sends SIGTERM (the sidecar drains what is in flight) and
SIGKILL after a grace period.  The ports come from the sidecar's stderr
(``listening name=inbound ... port=N``, ``admin ... port=N``); after that its
stderr keeps being read into a bounded tail, for a crash message, since a
full pipe would block the sidecar.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Sidecar", "SidecarError", "start_sidecar"]

_LISTENING = re.compile(rb"\blistening name=(\S+)\s.*?\bport=(\d+)")
_ADMIN = re.compile(rb"\badmin\b.*?\bport=(\d+)")


class SidecarError(Exception):
    """The sidecar did not start or did not report its ports in time."""


@dataclass
class Sidecar:
    """A running ``meshproxy run`` and the ports it reported."""

    process: asyncio.subprocess.Process
    ports: dict[str, int]  # listener name -> bound port
    admin_port: int
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    _drain: asyncio.Task[None] | None = None

    @property
    def outbound_port(self) -> int:
        return self.ports["outbound"]

    @property
    def inbound_port(self) -> int:
        return self.ports["inbound"]

    async def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM, SIGKILL after ``grace_s``; the exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._drain, 2.0)
        return self.process.returncode or 0


async def start_sidecar(
    config_path: Path, listeners: tuple[str, ...], timeout_s: float = 20.0
) -> Sidecar:
    """Start ``meshproxy run --config config_path`` and wait until it reports
    the admin port and the port of each of ``listeners``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshproxy", "run", "--config", str(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=20)
    ports: dict[str, int] = {}
    admin = None
    try:
        async with asyncio.timeout(timeout_s):
            while admin is None or not all(name in ports for name in listeners):
                line = await process.stderr.readline()
                if not line:
                    await process.wait()
                    raise SidecarError(
                        f"the sidecar exited with {process.returncode}:\n" + "\n".join(tail)
                    )
                tail.append(line.decode(errors="replace").rstrip())
                if found := _LISTENING.search(line):
                    ports[found.group(1).decode()] = int(found.group(2))
                if found := _ADMIN.search(line):
                    admin = int(found.group(1))
    except BaseException as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise SidecarError(f"the sidecar reported no ports within {timeout_s:g}s") from None
        raise
    sidecar = Sidecar(process, ports, admin, tail)
    sidecar._drain = asyncio.get_running_loop().create_task(_keep_reading(process, tail))
    return sidecar


async def _keep_reading(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())
