"""An instance's sidecar: its bootstrap and ``meshproxy run`` as a child process.

The bootstrap is dynamic mode (no snapshot of its own; the control plane's), with
one inbound listener on a port the sidecar picks, forwarding to the app, and no
upstreams: the instance only serves.  It is validated with the sidecar's own
bootstrap parser before it is written, so a drift from the schema fails here,
naming the field.  The ports the sidecar bound are read from its stderr
(``listening name=inbound ... port=N``, ``admin ... port=N``); after that its
stderr keeps being read into a bounded tail, for the crash message.
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
from typing import Any

import yaml

from meshproxy.config import parse_bootstrap

_LISTENING = re.compile(rb"\blistening name=(\S+)\s.*?\bport=(\d+)")
_ADMIN = re.compile(rb"\badmin\b.*?\bport=(\d+)")
START_TIMEOUT = 20.0


class SidecarError(Exception):
    """The sidecar did not start or did not report its ports in time."""


def bootstrap(
    node_id: str, service: str, control_url: str, token: str, app_port: int, zone: str | None
) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "service": service, "upstreams": []}
    if zone is not None:
        node["zone"] = zone
    config: dict[str, Any] = {
        "node": node,
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1", "port": 0,
             "local_app": f"127.0.0.1:{app_port}"}
        ],
        "control_plane": {"url": control_url, "token": token, "wait": "30s"},
    }  # fmt: skip
    parse_bootstrap(yaml.safe_dump(config), f"sidecar config of {node_id}")
    return config


@dataclass
class Sidecar:
    process: asyncio.subprocess.Process
    inbound_port: int
    admin_port: int
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    _reader: asyncio.Task[None] | None = None

    async def stop(self, deadline: float) -> None:
        """SIGTERM (the sidecar finishes what is in flight), SIGKILL after ``deadline``."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), deadline)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 2.0)


async def start(config_path: Path, timeout_s: float = START_TIMEOUT) -> Sidecar:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshproxy", "run", "--config", str(config_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=20)
    inbound = admin = None
    try:
        async with asyncio.timeout(timeout_s):
            while inbound is None or admin is None:
                line = await process.stderr.readline()
                if not line:
                    await process.wait()
                    lines = "\n".join(tail)
                    raise SidecarError(f"the sidecar exited with {process.returncode}:\n{lines}")
                tail.append(line.decode(errors="replace").rstrip())
                if (found := _LISTENING.search(line)) and found.group(1) == b"inbound":
                    inbound = int(found.group(2))
                if found := _ADMIN.search(line):
                    admin = int(found.group(1))
    except BaseException as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise SidecarError(f"the sidecar reported no ports within {timeout_s:g}s") from None
        raise
    sidecar = Sidecar(process, inbound, admin, tail)
    sidecar._reader = asyncio.create_task(_keep_reading(process, tail))
    return sidecar


async def _keep_reading(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    # A full stderr pipe would block the sidecar.
    assert process.stderr is not None
    while line := await process.stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())
