"""Start a real ``python -m meshproxy run`` on loopback and learn its ports.

The process writes its log to a file (no pipe to fill); the helper waits for
the ``ready`` line and reads ``listening name=... port=...`` and ``admin ...
port=...`` from it.  ``stop`` sends SIGTERM and kills after a bound wait.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

LISTENING = re.compile(r"^listening name=(\S+) .*port=(\d+)$", re.M)
_started = 0
ADMIN = re.compile(r"^admin address=\S+ port=(\d+)$", re.M)


class ProxyProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ports: dict[str, int] = {}
        self.admin_port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while True:
                text = self.log()
                if self.proc.poll() is not None:
                    raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{text}")
                if re.search(r"^ready pid=\d+ worker=-", text, re.M):
                    break
                await asyncio.sleep(0.05)
        text = self.log()
        self.ports = {name: int(port) for name, port in LISTENING.findall(text)}
        admin = ADMIN.search(text)
        self.admin_port = int(admin.group(1)) if admin else 0

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        async with asyncio.timeout(within):
            while self.proc.poll() is None:  # noqa: ASYNC110 - polling a child process
                await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        self.terminate()
        try:
            await self.wait_exit(10.0)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait(5)


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "proxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def basic_config(
    services: dict[str, list[int]],
    listeners: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A bootstrap with an outbound listener on port 0 and ``services`` on loopback."""
    config: dict[str, Any] = {
        "node": {"id": "test-1", "service": "tester"},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": listeners
        or [{"name": "outbound", "direction": "outbound", "address": "127.0.0.1", "port": 0}],
        "snapshot": {
            "services": {
                name: {"endpoints": [{"address": "127.0.0.1", "port": p} for p in ports]}
                for name, ports in services.items()
            }
        },
    }
    config.update(extra)
    return config


def inbound_config(app_port: int, **snapshot: Any) -> dict[str, Any]:
    """The sidecar of ``ratings``: one inbound listener (``inbound``, port 0) in
    front of the app on ``app_port``, with ``snapshot`` as its snapshot."""
    return {
        "node": {"id": "ratings-1", "service": "ratings"},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "local_app": f"127.0.0.1:{app_port}",
            }
        ],
        "snapshot": snapshot,
    }


async def start_proxy(
    tmp_path: Path,
    config: dict[str, Any],
    *args: str,
    env: dict[str, str] | None = None,
) -> ProxyProcess:
    path = write_config(tmp_path, config)
    global _started
    _started += 1
    log_path = tmp_path / f"proxy-{_started}.log"
    full_env = dict(os.environ)
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full_env.update(env or {})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-m", "meshproxy", "run", "--config", str(path), *args],
            stdout=log_file,
            stderr=log_file,
            env=full_env,
        )
    proxy = ProxyProcess(proc, log_path)
    try:
        await proxy.wait_ready()
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proxy


def mesh_config(
    services: dict[str, list[tuple[int, str | None]]],
    routes: list[dict[str, Any]] | None = None,
    policies: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A bootstrap whose services have loopback endpoints ``(port, version)``;
    each version label becomes a subset of its service."""
    config = basic_config({})
    snapshot = config["snapshot"]
    by_service = {p["service"]: p for p in policies or []}
    for name, endpoints in services.items():
        snapshot["services"][name] = {
            "endpoints": [
                {"address": "127.0.0.1", "port": port}
                | ({"labels": {"version": version}} if version else {})
                for port, version in endpoints
            ]
        }
        versions = sorted({v for _, v in endpoints if v})
        if versions:
            policy = by_service.setdefault(name, {"service": name})
            policy.setdefault("subsets", {v: {"labels": {"version": v}} for v in versions})
    snapshot["routes"] = routes or []
    snapshot["policies"] = list(by_service.values())
    return config
