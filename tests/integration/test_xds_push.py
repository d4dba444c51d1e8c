"""Push end to end: a real ``meshcontrol run`` and real sidecars on loopback.

Twenty sidecars ACK one write within a second; open connections (a keep-alive
client and a WebSocket) live through a hundred pushes; a snapshot a sidecar
refuses is a NACK with its reason at /v1/proxies; a sidecar started while the
control plane is down serves its cached snapshot.  Every process started here
is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control.state import Kind, parse_resource
from control.store.base import Change
from control.store.sqlite import SQLiteStore
from tests.integration.client import Conn, get
from tests.integration.proxyproc import ProxyProcess, write_config

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "xds-admin-token"
READ_TOKEN = "xds-read-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
ROOT = Path(__file__).parents[2]


class ControlProcess:
    """``meshcontrol run --port 0`` with its own data directory and log file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / f"meshcontrol-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0

    async def start(self, within: float = 20.0, port: int = 0) -> ControlProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MESHCONTROL_DATA_DIR": str(self.data_dir),
            "MESHCONTROL_ADMIN_TOKEN": ADMIN_TOKEN,
            "MESHCONTROL_READ_TOKEN": READ_TOKEN,
        }
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [sys.executable, "-m", "control", "run", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        async with asyncio.timeout(within):
            while True:
                text = self.log_path.read_text(errors="replace")[start:]
                found = re.search(r"listening address=\S+ port=(\d+)", text)
                if found:
                    self.port = int(found.group(1))
                    self.url = f"http://127.0.0.1:{self.port}"
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError(f"meshcontrol exited {self.proc.returncode}:\n{text}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                while proc.poll() is None:  # noqa: ASYNC110 - polling a child process
                    await asyncio.sleep(0.05)
        except TimeoutError:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlProcess]:
    cp = await ControlProcess(tmp_path / "control").start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def sidecars() -> AsyncIterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(proxy.stop() for proxy in started))


def sidecar_config(
    url: str, node: str, upstreams: list[str] | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    control_plane: dict[str, Any] = {"url": url, "token": READ_TOKEN, "wait": "30s"}
    if cache_dir is not None:
        control_plane["cache_dir"] = str(cache_dir)
    node_info: dict[str, Any] = {"id": node, "service": "reviews"}
    if upstreams is not None:
        node_info["upstreams"] = upstreams
    return {
        "node": node_info,
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "outbound", "direction": "outbound", "address": "127.0.0.1", "port": 0}
        ],
        "control_plane": control_plane,
    }


async def start_sidecar(
    tmp_path: Path, started: list[ProxyProcess], config: dict[str, Any], within: float = 60.0
) -> ProxyProcess:
    """Each sidecar gets its own directory (the config file name is fixed) and a
    generous start budget: twenty interpreters starting at once on a small
    machine take a while."""
    home = tmp_path / config["node"]["id"]
    home.mkdir(parents=True, exist_ok=True)
    path = write_config(home, config)
    log_path = home / "proxy.log"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-m", "meshproxy", "run", "--config", str(path)],
            stdout=log_file,
            stderr=log_file,
            env=env,
        )
    proxy = ProxyProcess(proc, log_path)
    started.append(proxy)
    await proxy.wait_ready(within)
    return proxy


async def _json(response: Awaitable[aiohttp.ClientResponse]) -> Any:
    async with await response as r:
        assert r.status < 300, await r.text()
        return await r.json()


async def proxies(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    body = await _json(http.get(f"{url}/v1/proxies", headers=READER))
    return {p["id"]: p for p in body["proxies"]}


async def until(check: Callable[[], Awaitable[bool]], within: float, pause: float = 0.01) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling another process's view
            await asyncio.sleep(pause)


async def acked_by(http: aiohttp.ClientSession, url: str, nodes: list[str], version: int) -> None:
    async def done() -> bool:
        seen = await proxies(http, url)
        return all(seen.get(n, {}).get("acked_version") == version for n in nodes)

    await until(done, within=10)


async def register(http: aiohttp.ClientSession, url: str, service: str, port: int) -> int:
    spec = {"service": service, "address": "127.0.0.1", "port": port, "ttl": "10m"}
    version: int = (await _json(http.post(f"{url}/v1/instances", json=spec, headers=ADMIN)))[
        "version"
    ]
    return version


async def put(http: aiohttp.ClientSession, url: str, path: str, body: object) -> int:
    version: int = (await _json(http.put(f"{url}/v1/{path}", json=body, headers=ADMIN)))["version"]
    return version


async def test_twenty_sidecars_ack_one_write_within_a_second(
    tmp_path: Path,
    control: ControlProcess,
    http: aiohttp.ClientSession,
    sidecars: list[ProxyProcess],
) -> None:
    nodes = [f"reviews-{i}" for i in range(20)]
    await asyncio.gather(
        *(
            start_sidecar(tmp_path, sidecars, sidecar_config(control.url, n, ["ratings"]))
            for n in nodes
        )
    )

    async def all_watching() -> bool:
        seen = await proxies(http, control.url)
        return all(seen.get(n, {}).get("watching") for n in nodes) and all(
            seen[n]["acked_version"] is not None for n in nodes
        )

    await until(all_watching, within=10, pause=0.05)
    started = time.monotonic()
    written = await put(http, control.url, "policies/ratings", {"subsets": {}})
    await acked_by(http, control.url, nodes, written)
    elapsed = time.monotonic() - started
    seen = await proxies(http, control.url)
    assert elapsed < 1.0, f"20 sidecars took {elapsed * 1000:.0f} ms to ACK"
    assert {seen[n]["acked_version"] for n in nodes} == {written}
    assert all(seen[n]["last_error"] is None for n in nodes)
    print(f"20 sidecars acked version {written} in {elapsed * 1000:.0f} ms")


async def _ws_origin() -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


async def test_a_keep_alive_client_and_a_websocket_survive_a_hundred_pushes(
    tmp_path: Path,
    control: ControlProcess,
    http: aiohttp.ClientSession,
    sidecars: list[ProxyProcess],
) -> None:
    runner, origin_port = await _ws_origin()
    try:
        await register(http, control.url, "web", origin_port)
        proxy = await start_sidecar(
            tmp_path, sidecars, sidecar_config(control.url, "reviews-ws", ["web"])
        )
        port = proxy.ports["outbound"]
        conn = await Conn.open(port)
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws", headers={"Host": "web"})
        policies = [{"load_balancer": {"policy": p}} for p in ("random", "round_robin")]
        statuses: list[int] = []
        echoes: list[str] = []
        try:
            for i in range(100):
                written = await put(http, control.url, "policies/web", policies[i % 2])
                await acked_by(http, control.url, ["reviews-ws"], written)
                response = await conn.request(get("/", host="web"))
                statuses.append(response.status)
                await ws.send_str(str(i))
                echoes.append(await asyncio.wait_for(ws.receive_str(), 5))
            closed = ws.closed
        finally:
            await ws.close()
            await conn.close()
        seen = (await proxies(http, control.url))["reviews-ws"]
    finally:
        await runner.cleanup()
    assert statuses == [200] * 100
    assert echoes == [f"echo {i}" for i in range(100)]
    assert not closed
    assert seen["acked_version"] == written and seen["last_error"] is None


async def test_a_snapshot_the_sidecar_refuses_shows_as_a_nack_with_its_reason(
    tmp_path: Path,
    control: ControlProcess,
    http: aiohttp.ClientSession,
    sidecars: list[ProxyProcess],
) -> None:
    await register(http, control.url, "ratings", 9)
    good = await put(http, control.url, "policies/ratings", {"subsets": {"v1": {"labels": {}}}})
    proxy = await start_sidecar(tmp_path, sidecars, sidecar_config(control.url, "reviews-nack"))
    await acked_by(http, control.url, ["reviews-nack"], good)
    # An upgrade over a store that an older release wrote: that release did
    # not check mirror targets, so its last commit routes a mirror to a subset
    # no policy defines.  The store is the truth, the new release serves it,
    # and the sidecar's route compiler refuses it.
    await control.stop()
    route = {"rules": [{"backends": [{"subset": "v1"}], "mirror": {"subset": "v9"}}]}
    refused = commit_unchecked(control.data_dir, "routes", "ratings", route)
    await control.start(port=control.port)

    async def nacked() -> bool:
        seen = (await proxies(http, control.url)).get("reviews-nack", {})
        return bool(seen.get("error_version") == refused)

    await until(nacked, within=30, pause=0.05)
    seen = (await proxies(http, control.url))["reviews-nack"]
    assert seen["acked_version"] is None  # nothing newer than what it runs was accepted
    assert "mirror" in seen["last_error"] and "v9" in seen["last_error"]
    log = proxy.log_path.read_text(errors="replace")
    assert f"snapshot refused version={refused}" in log
    assert f"snapshot applied version={refused}" not in log


def commit_unchecked(data_dir: Path, kind: Kind, name: str, body: object) -> int:
    """Commit to a stopped control plane's SQLite store without the whole-state
    check, as a release without that check did; returns the new version."""
    store = SQLiteStore(data_dir / "meshcontrol.db")
    try:
        loaded = store.load()
        state = loaded.state.with_resource(kind, name, parse_resource(kind, name, body))
        change = Change("older-release", "put", f"{kind}/{name}", f"{kind} of {name}", state)
        return store.commit(loaded.version, change, time.time())
    finally:
        store.close()


async def _ready_status(http: aiohttp.ClientSession, proxy: ProxyProcess) -> int:
    async with http.get(f"http://127.0.0.1:{proxy.admin_port}/ready") as r:
        return r.status


async def test_a_sidecar_started_while_the_control_plane_is_down_serves_from_its_cache(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    sidecars: list[ProxyProcess],
) -> None:
    runner, origin_port = await _ws_origin()
    cache_dir = tmp_path / "cache"
    try:
        control = await ControlProcess(tmp_path / "control").start()
        try:
            written = await register(http, control.url, "web", origin_port)
            config = sidecar_config(control.url, "reviews-cache", ["web"], cache_dir)
            first = await start_sidecar(tmp_path, sidecars, config)
            await acked_by(http, control.url, ["reviews-cache"], written)
            await first.stop()
        finally:
            await control.stop()
        assert (cache_dir / "reviews-cache.json").exists()
        second = await start_sidecar(tmp_path / "again", sidecars, config)
        conn = await Conn.open(second.ports["outbound"])
        try:
            response = await conn.request(get("/", host="web"))
        finally:
            await conn.close()
        ready = await _ready_status(http, second)
    finally:
        await runner.cleanup()
    assert response.status == 200 and response.body == b"hello"
    assert ready == 200
    assert "source=cache" in second.log()
    assert "control plane unavailable" in second.log()


async def test_ready_stays_503_until_a_snapshot_is_in_force(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with_nothing = sidecar_config("http://127.0.0.1:9", "reviews-wait", cache_dir=tmp_path / "c")
    path = write_config(tmp_path, with_nothing)
    log_path = tmp_path / "wait.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-m", "meshproxy", "run", "--config", str(path)],
            stdout=log_file,
            stderr=log_file,
        )
    proxy = ProxyProcess(proc, log_path)
    try:

        async def admin_up() -> bool:
            return "admin address=" in proxy.log() and "control plane unavailable" in proxy.log()

        await until(admin_up, within=15, pause=0.05)
        found = re.search(r"^admin address=\S+ port=(\d+)$", proxy.log(), re.M)
        assert found is not None
        proxy.admin_port = int(found.group(1))
        status = await _ready_status(http, proxy)
        log = proxy.log()
    finally:
        await proxy.stop()
    assert status == 503
    assert "ready pid=" not in log
