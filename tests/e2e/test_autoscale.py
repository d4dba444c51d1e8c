"""Autoscaling end to end: a control plane, two node agents (``meshcontrol agent``),
the demo origin as the ``ratings`` service, and a client sidecar.

Load on ratings rises (20 concurrent callers for 10 s through the client sidecar):
the autoscaler adds instances, the agents start them behind their own sidecars and
register them, and the client sidecar balances to them.  Load falls to a trickle: the
extra instances are removed after the stabilisation window, drained first, and not
one request fails on the way.  Every process is a real child on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshproxy.demo.dynamic import ControlPlane, control_plane, dynamic_bootstrap
from meshproxy.demo.dynamic import start_dynamic_sidecar as start_sidecar

pytestmark = pytest.mark.integration

SERVICE = "ratings"
ROOT = Path(__file__).resolve().parents[2]
# The demo origin, slowed to 50 ms an answer so that 20 callers make real concurrency,
# and naming its port in a header so the test sees which instance answered.
APP = """
import asyncio, os
from aiohttp import web
from meshproxy.demo.origin import make_app

@web.middleware
async def slow(request, handler):
    await asyncio.sleep(0.05)
    response = await handler(request)
    response.headers["x-instance-port"] = os.environ["PORT"]
    return response

app = make_app("v1")
app.middlewares.append(slow)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
"""
SPEC = {
    "command": [sys.executable, "-c", APP],
    "cpu": "300m",
    "memory": "1Gi",
    "min_replicas": 1,
    "max_replicas": 3,
    "autoscaling": {
        "metric": "concurrency",
        "target": 3,
        "stable_window": "6s",
        "panic_window_percentage": 10,  # 0.6 s: one 1 s bucket
        "scale_down_stabilization": "5s",
    },
}
CALLERS = 20
LOAD_S = 10.0


@contextlib.asynccontextmanager
async def agent(cp: ControlPlane, node: str, zone: str, workdir: Path) -> AsyncIterator[None]:
    log = (workdir / f"agent-{node}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control", "agent", "--control-plane", cp.url, "--node", node,
        "--cpu", "1000m", "--memory", "4Gi", "--zone", zone, "--token", cp.admin_token,
        "--work-dir", str(workdir / node),
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # the agent drains its instances
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        log.close()


async def running(cp: ControlPlane) -> list[dict[str, Any]]:
    body = await cp.call("GET", f"/v1/services/{SERVICE}/spec")
    return [i for i in body["instances"] if i["status"] and i["status"]["state"] == "running"]


async def assigned(cp: ControlPlane) -> int:
    return len((await cp.call("GET", f"/v1/services/{SERVICE}/spec"))["instances"])


class Callers:
    """Requests through the client sidecar; every outcome counted."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.ok = 0
        self.failed: list[str] = []
        self.by_port: Counter[str] = Counter()

    async def call(self) -> None:
        try:
            async with self.http.get(self.url, headers={"Host": SERVICE}) as response:
                await response.read()
                if response.status == 200:
                    self.ok += 1
                    self.by_port[response.headers.get("x-instance-port", "?")] += 1
                else:
                    self.failed.append(f"status {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed.append(repr(exc))

    async def loop(self, until: float, pause: float = 0.0) -> None:
        clock = asyncio.get_running_loop()
        while clock.time() < until:
            await self.call()
            if pause:
                await asyncio.sleep(pause)


async def wait_for(check: Any, seconds: float, what: str) -> Any:
    clock = asyncio.get_running_loop()
    deadline = clock.time() + seconds
    while clock.time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds:g}s")


async def test_load_adds_instances_and_their_removal_fails_no_request(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        cp = await stack.enter_async_context(control_plane(tmp_path / "control"))
        await stack.enter_async_context(agent(cp, "node-a", "a", tmp_path))
        await stack.enter_async_context(agent(cp, "node-b", "b", tmp_path))
        await wait_for(lambda: _nodes(cp, 2), 20, "both agents registered")
        await cp.call("PUT", f"/v1/services/{SERVICE}/spec", SPEC)
        config = dynamic_bootstrap(
            "client-1", "client", cp.url, cp.read_token, 0, outbound_port=0, upstreams=[SERVICE]
        )
        client = await start_sidecar(tmp_path, config, ("outbound",))
        stack.push_async_callback(client.stop)
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        callers = Callers(http, f"http://127.0.0.1:{client.outbound_port}/")

        async def answering() -> bool:
            if not await running(cp):
                return False
            await callers.call()
            return callers.ok > 0

        await wait_for(answering, 30, "the first instance answering through the mesh")
        callers.failed.clear()  # only the warm-up, before the first instance was known

        # Load rises.
        clock = asyncio.get_running_loop()
        end = clock.time() + LOAD_S
        await asyncio.gather(*(callers.loop(end) for _ in range(CALLERS)))
        peak = await assigned(cp)
        served = {port for port, n in callers.by_port.items() if n >= 10}
        assert peak >= 2, f"no scale-up: {await cp.call('GET', '/v1/decisions')}"
        assert len(served) >= 2, f"traffic stayed on one instance: {callers.by_port}"
        nodes = {i["node"] for i in await running(cp)}
        assert nodes == {"node-a", "node-b"}  # the scheduler spread them
        loaded_ok = callers.ok

        # Load falls to a trickle that keeps watching for failures while they drain.
        trickle = asyncio.ensure_future(callers.loop(clock.time() + 45, pause=0.02))
        try:
            await wait_for(
                lambda: _back_to(cp, 1), 40, "the extra instances removed after stabilisation"
            )
            await asyncio.sleep(3.0)  # past the drain delay and the SIGTERM of the sidecars
        finally:
            trickle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickle
        assert callers.failed == [], callers.failed[:10]
        assert callers.ok > loaded_ok
        decisions = (await cp.call("GET", f"/v1/decisions?service={SERVICE}"))["decisions"]
        scales = [d["reason"] for d in decisions if d["action"] == "scale"]
        assert any(r.startswith(f"{peak} -> 1") or " -> 1:" in r for r in scales), scales
        assert any("panic" in r or "stable window" in r for r in scales)
        assert sum(d["action"] == "remove" for d in decisions) == peak - 1


async def _nodes(cp: ControlPlane, count: int) -> bool:
    return len((await cp.call("GET", "/v1/nodes"))["nodes"]) == count


async def _back_to(cp: ControlPlane, count: int) -> bool:
    return await assigned(cp) == count and len(await running(cp)) == count
