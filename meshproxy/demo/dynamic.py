"""The dynamic demo: a control plane on SQLite drives the sidecars.

``meshcontrol run`` (a child process, temporary data directory, generated
tokens), each version of ``ratings`` behind its own sidecar (inbound listener
to the local app), and a ``reviews`` sidecar whose outbound listener the demo's
traffic goes through.  Every sidecar is in dynamic mode: it starts with no
snapshot and takes its config from the control plane, which the demo then
drives through its REST API (routes here, rollouts in ``demo.rollout``).

It drives the mesh only from outside (HTTP API, child processes); it must not
import the control plane's code: the sidecar package never depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from meshproxy.config import parse_bootstrap
from meshproxy.demo.origin import SERVICE
from meshproxy.demo.sidecar import Sidecar, SidecarError, start_sidecar

CLIENT = "reviews"
_LISTENING = re.compile(rb"\blistening address=\S+ port=(\d+)")
# Registrations live this long without a heartbeat; the demo beats far more often.
TTL_S = 30.0
HEARTBEAT_S = 5.0


def canary(v1_weight: int, v2_weight: int) -> dict[str, Any]:
    """The route table body for ``PUT /v1/routes/ratings``."""
    return {
        "rules": [
            {
                "match": [{"path": {"prefix": "/"}}],
                "backends": [
                    {"subset": "v1", "weight": v1_weight},
                    {"subset": "v2", "weight": v2_weight},
                ],
            }
        ]
    }


VERSIONS = ("v1", "v2", "v3")
SUBSETS = {"subsets": {v: {"labels": {"version": v}} for v in VERSIONS}}


def dynamic_bootstrap(
    node_id: str,
    service: str,
    control_url: str,
    token: str,
    admin_port: int,
    *,
    outbound_port: int | None = None,
    local_app_port: int | None = None,
    upstreams: list[str] | None = None,
) -> dict[str, Any]:
    """A sidecar config with no snapshot of its own: the control plane's."""
    listeners: list[dict[str, Any]] = []
    if outbound_port is not None:
        listeners.append(
            {"name": "outbound", "direction": "outbound", "address": "127.0.0.1",
             "port": outbound_port}
        )  # fmt: skip
    if local_app_port is not None:
        listeners.append(
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1", "port": 0,
             "local_app": f"127.0.0.1:{local_app_port}"}
        )  # fmt: skip
    node: dict[str, Any] = {"id": node_id, "service": service}
    if upstreams is not None:
        node["upstreams"] = upstreams
    config: dict[str, Any] = {
        "node": node,
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "listeners": listeners,
        "control_plane": {"url": control_url, "token": token, "wait": "30s"},
    }
    parse_bootstrap(yaml.safe_dump(config), f"demo config of {node_id}")
    return config


class ControlPlaneError(Exception):
    """The control plane did not start, or answered a call with an error."""


@dataclass
class ControlPlane:
    """A running ``meshcontrol run`` and a client of its API."""

    process: asyncio.subprocess.Process
    url: str
    admin_token: str
    read_token: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: object = None) -> Any:
        token = self.admin_token if method != "GET" else self.read_token
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as response:
            if response.status >= 300:
                text = await response.text()
                raise ControlPlaneError(f"{method} {path}: {response.status} {text[:300]}")
            if response.status == 204:
                return None
            return await response.json()

    async def put(self, path: str, body: object) -> int:
        answer = await self.call("PUT", path, body)
        return int(answer["version"])

    async def register(self, port: int, version: str) -> str:
        spec = {
            "service": SERVICE,
            "address": "127.0.0.1",
            "port": port,
            "labels": {"version": version},
            "ttl": f"{TTL_S:g}s",
        }
        answer = await self.call("POST", "/v1/instances", spec)
        return str(answer["id"])

    async def acked(self, node: str, version: int, timeout_s: float = 20.0) -> None:
        """Wait until ``node`` has ACKed ``version`` or a later one."""
        async with asyncio.timeout(timeout_s):
            while True:
                body = await self.call("GET", "/v1/proxies")
                for proxy in body["proxies"]:
                    if proxy["id"] == node and (proxy.get("acked_version") or 0) >= version:
                        return
                await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 10.0) -> None:
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def control_plane(data_dir: Path, timeout_s: float = 20.0) -> AsyncIterator[ControlPlane]:
    """``meshcontrol run --port 0`` on SQLite in ``data_dir``, stopped on exit."""
    admin_token, read_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "MESHCONTROL_DATA_DIR": str(data_dir),
        "MESHCONTROL_ADMIN_TOKEN": admin_token,
        "MESHCONTROL_READ_TOKEN": read_token,
        "MESHCONTROL_STORE": "sqlite",
    }
    log = data_dir / "meshcontrol.log"
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control", "run", "--port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=sink,
            env=env, start_new_session=True,
        )  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        cp = ControlPlane(process, "", admin_token, read_token, http)
        try:
            async with asyncio.timeout(timeout_s):
                while not (found := _LISTENING.search(log.read_bytes())):
                    if process.returncode is not None:
                        tail = log.read_text(errors="replace")[-2000:]
                        raise ControlPlaneError(f"meshcontrol exited:\n{tail}")
                    await asyncio.sleep(0.05)
            cp.url = f"http://127.0.0.1:{int(found.group(1))}"
            yield cp
        except TimeoutError:
            raise ControlPlaneError(f"meshcontrol did not listen within {timeout_s:.0f}s") from None
        finally:
            await cp.stop()


async def start_dynamic_sidecar(
    workdir: Path, config: dict[str, Any], listeners: tuple[str, ...]
) -> Sidecar:
    path = workdir / f"{config['node']['id']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return await start_sidecar(path, listeners=listeners)


async def heartbeats(cp: ControlPlane, ids: list[str]) -> None:
    """Keep the registrations alive while the demo runs."""
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        for instance in ids:
            with contextlib.suppress(ControlPlaneError, aiohttp.ClientError, TimeoutError):
                await cp.call("PUT", f"/v1/instances/{instance}/heartbeat")


@dataclass
class Mesh:
    """What the dynamic demo started, for the steps and the URLs."""

    cp: ControlPlane
    client: Sidecar
    client_id: str
    sidecars: list[Sidecar]


@contextlib.asynccontextmanager
async def dynamic_mesh(
    workdir: Path, apps: dict[str, int], outbound_port: int, admin_port: int
) -> AsyncIterator[Mesh]:
    """The control plane, one sidecar per ratings version (``apps``: version ->
    local app port) and the client's, ratings' subsets defined and its
    instances registered; all stopped on exit."""
    async with control_plane(workdir / "control") as cp:
        sidecars: list[Sidecar] = []
        beating: asyncio.Task[None] | None = None
        try:
            await cp.put(f"/v1/policies/{SERVICE}", SUBSETS)
            ids = []
            for version, app_port in apps.items():
                config = dynamic_bootstrap(
                    f"{SERVICE}-{version}", SERVICE, cp.url, cp.read_token, 0,
                    local_app_port=app_port, upstreams=[],
                )  # fmt: skip
                sidecar = await start_dynamic_sidecar(workdir, config, ("inbound",))
                sidecars.append(sidecar)
                ids.append(await cp.register(sidecar.ports["inbound"], version))
            client_id = f"{CLIENT}-1"
            config = dynamic_bootstrap(
                client_id, CLIENT, cp.url, cp.read_token, admin_port,
                outbound_port=outbound_port, upstreams=[SERVICE],
            )  # fmt: skip
            client = await start_dynamic_sidecar(workdir, config, ("outbound",))
            sidecars.append(client)
            beating = asyncio.get_running_loop().create_task(heartbeats(cp, ids))
            yield Mesh(cp, client, client_id, sidecars)
        finally:
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            await asyncio.gather(*(s.stop() for s in sidecars))


__all__ = [
    "CLIENT",
    "VERSIONS",
    "ControlPlane",
    "ControlPlaneError",
    "Mesh",
    "SidecarError",
    "canary",
    "control_plane",
    "dynamic_bootstrap",
    "dynamic_mesh",
]
