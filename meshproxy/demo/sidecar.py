"""The demo's sidecar: its config, and ``meshproxy run`` as a child process.

The config is a plain dict validated by the real bootstrap models before it is
written, so a demo that drifts from the schema fails here with the field
named, not inside the sidecar.  The child runs in its own session: Ctrl-C
reaches the demo, which then stops the sidecar itself (SIGTERM, then SIGKILL
after a grace period).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshproxy.config import parse_bootstrap
from meshproxy.demo.origin import SERVICE

ADMIN_PORT = 15000
OUTBOUND_PORT = 15001

_LISTENING = re.compile(rb"\blistening name=(\S+)\s.*?\bport=(\d+)")
_ADMIN = re.compile(rb"\badmin\b.*?\bport=(\d+)")


class SidecarError(Exception):
    """The sidecar did not start, or did not become ready, in time."""


def port_or_any(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it can be bound right now, else 0 (the OS picks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, preferred))
        except OSError:
            return 0
    return preferred


def demo_bootstrap(
    v1_port: int, v2_port: int, outbound_port: int, admin_port: int
) -> dict[str, Any]:
    """One outbound listener; ``ratings`` has a v1 and a v2 endpoint and a
    route that sends 90% of requests to v1 and 10% to v2."""
    config: dict[str, Any] = {
        "node": {"id": "demo-1", "service": "demo-client"},
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "listeners": [
            {
                "name": "outbound",
                "direction": "outbound",
                "address": "127.0.0.1",
                "port": outbound_port,
            },
        ],
        "snapshot": {
            "services": {
                SERVICE: {
                    "endpoints": [
                        {"address": "127.0.0.1", "port": v1_port, "labels": {"version": "v1"}},
                        {"address": "127.0.0.1", "port": v2_port, "labels": {"version": "v2"}},
                    ]
                }
            },
            "routes": [
                {
                    "service": SERVICE,
                    "rules": [
                        {
                            "match": [{"path": {"prefix": "/"}}],
                            "backends": [
                                {"subset": "v1", "weight": 90},
                                {"subset": "v2", "weight": 10},
                            ],
                        }
                    ],
                }
            ],
            "policies": [
                {
                    "service": SERVICE,
                    "subsets": {
                        "v1": {"labels": {"version": "v1"}},
                        "v2": {"labels": {"version": "v2"}},
                    },
                }
            ],
        },
    }
    parse_bootstrap(yaml.safe_dump(config), "demo config")
    return config


@dataclass
class Sidecar:
    """A running ``meshproxy run`` and the ports it reported on stderr."""

    process: asyncio.subprocess.Process
    ports: dict[str, int]  # listener name -> bound port
    admin_port: int
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    _drain: asyncio.Task[None] | None = None

    @property
    def outbound_port(self) -> int:
        return self.ports["outbound"]

    async def stop(self, grace_s: float = 10.0) -> int:
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
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 2.0)
        return self.process.returncode or 0


async def start_sidecar(
    config_path: Path, timeout_s: float = 20.0, listeners: tuple[str, ...] = ("outbound",)
) -> Sidecar:
    """Start ``meshproxy run`` and wait until it reports the admin port and
    the port of each of ``listeners``."""
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
            raise SidecarError(f"the sidecar reported no ports within {timeout_s:.0f}s") from None
        raise
    sidecar = Sidecar(process, ports, admin, tail)
    sidecar._drain = asyncio.get_running_loop().create_task(_keep_reading(process, tail))
    return sidecar


async def _keep_reading(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    # A full stderr pipe would block the sidecar; keep the last lines for errors.
    assert process.stderr is not None
    while line := await process.stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())
