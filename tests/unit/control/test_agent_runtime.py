"""A node agent against a real control plane (in-process, 127.0.0.1): it starts an
assigned instance behind its own sidecar (``meshproxy run``, a child process),
registers it, restarts it after a crash, and stops and deregisters it when the
spec goes away.  Plus the pieces: limits in a child, the restart backoff."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.agent.agent import Agent
from control.agent.backoff import Backoff
from control.agent.channel import Channel
from control.agent.limits import Cgroups, Limits, Request, own_cgroup
from control.agent.runner import inbound_load
from control.agent.sidecar import SidecarError
from control.agent.sidecar import bootstrap as sidecar_bootstrap
from control.agent.sidecar import start as start_sidecar
from control.api.agents import AGENTS
from control.app import build_app
from control.nodes import NodeRegistration
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
APP = """
import http.server, os
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from " + os.environ["WHO"].encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""
SPEC = {
    "command": [sys.executable, "-c", APP],
    "env": {"WHO": "hello-app"},
    "cpu": "250m",
    "memory": "512Mi",
    "min_replicas": 1,
    "max_replicas": 1,
}


def test_rlimit_mode_limits_the_childs_address_space() -> None:
    limits = Limits(None)
    request = Request(cpu_millis=250, memory_bytes=300 * 2**20, cpu_seconds=60)
    script = (
        "import resource as r; print(r.getrlimit(r.RLIMIT_AS)[0], r.getrlimit(r.RLIMIT_CPU)[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=limits.preexec("x", request),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == [str(300 * 2**20), "60"]
    assert limits.describe(request) == "rlimit: RLIMIT_AS=314572800; RLIMIT_CPU=60s"
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != 300 * 2**20  # the parent is untouched


def test_cgroups_are_not_used_without_a_unified_hierarchy(tmp_path: Path) -> None:
    assert Cgroups.detect(tmp_path) is None
    assert Limits.detect(tmp_path).mode == "rlimit"
    assert own_cgroup("4:memory:/x\n0::/user.slice/agent\n") == "/user.slice/agent"
    assert own_cgroup("4:memory:/x\n") is None


def test_cgroup_mode_writes_memory_and_cpu_quota(tmp_path: Path) -> None:
    cgroups = Cgroups(tmp_path)
    group = cgroups.prepare("ratings-1", Request(cpu_millis=250, memory_bytes=2**28))
    assert (group / "memory.max").read_text() == str(2**28)
    assert (group / "cpu.max").read_text() == "25000 100000"
    # A directory of a plain file system stands in for cgroupfs, so it is not removed here.
    cgroups.release("ratings-1")


def test_delegated_cgroup_v2_subtree_is_used_and_the_child_joins_it(tmp_path: Path) -> None:
    # A plain directory laid out like a delegated cgroupfs: the agent's group, where
    # the kernel would list the controllers it may hand down.
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    base = tmp_path / "agents" / f"meshcontrol-agent-{os.getpid()}"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu memory\n")
    limits = Limits.detect(tmp_path, "0::/agents\n")
    assert limits.mode == "cgroup-v2"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"
    request = Request(cpu_millis=500, memory_bytes=2**27)
    group = base / "ratings-1"
    group.mkdir()
    (group / "cgroup.procs").write_text("")  # cgroupfs has it in every group
    subprocess.run(
        [sys.executable, "-c", "pass"],
        preexec_fn=limits.preexec("ratings-1", request),
        timeout=30,
        check=True,
    )
    assert (group / "cgroup.procs").read_text() == "0"  # the child wrote itself in
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert limits.describe(request) == f"cgroup-v2: memory.max={2**27} cpu=500m"


def test_cgroups_without_cpu_and_memory_delegated_fall_back_to_rlimits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    base = tmp_path / f"meshcontrol-agent-{os.getpid()}"
    base.mkdir()
    (base / "cgroup.controllers").write_text("pids\n")
    assert Cgroups.detect(tmp_path, "0::/\n") is None


def test_backoff_doubles_to_its_cap_and_forgives_a_stable_run() -> None:
    backoff = Backoff(first=0.5, factor=2.0, cap=3.0, stable_after=10.0)
    assert [backoff.crashed(0.0, 1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.crashed(0.0, 20.0) == 0.5


def test_inbound_load_sums_only_the_inbound_side() -> None:
    text = (
        "# TYPE meshproxy_requests_total counter\n"
        'meshproxy_requests_total{direction="inbound",response_code="200"} 7\n'
        'meshproxy_requests_total{direction="outbound",response_code="200"} 100\n'
        "# TYPE meshproxy_request_duration_seconds histogram\n"
        'meshproxy_request_duration_seconds_sum{direction="inbound"} 1.5\n'
        'meshproxy_request_duration_seconds_count{direction="inbound"} 7\n'
        'meshproxy_request_duration_seconds_sum{direction="outbound"} 9\n'
    )
    assert inbound_load(text) == (7.0, 1.5)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(admin_token="admin-secret", data_dir=tmp_path, tick=0.05)
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 30.0) -> Any:
    for _ in range(int(seconds / 0.1)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.integration
async def test_agent_runs_restarts_and_stops_an_instance(
    control: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = str(control.make_url("")).rstrip("/")
    registration = NodeRegistration(id="n1", cpu="1000m", memory="1Gi", zone="a")
    async with aiohttp.ClientSession() as session:
        agent = Agent(
            Channel(session, url, "admin-secret"),
            registration,
            tmp_path / "agent",
            limits=Limits(None),
            report_every=0.2,
            drain_delay=0.2,
            stop_deadline=5.0,
            restart_backoff=Backoff(first=0.2, cap=1.0),
        )
        task = asyncio.create_task(agent.run(session))
        try:
            await until(lambda: _node(control))
            await control.put("/v1/services/hello/spec", json=SPEC, headers=ADMIN)

            async def running() -> dict[str, Any] | None:
                instances = (await _node(control) or {}).get("instances", [])
                ok = [i for i in instances if (i["status"] or {}).get("state") == "running"]
                return ok[0] if ok else None

            first = await until(running)
            status = first["status"]
            assert status["limits"].startswith("rlimit: RLIMIT_AS=536870912")
            async with session.get(f"http://127.0.0.1:{status['port']}/") as answer:
                assert await answer.text() == "hello from hello-app"
            services = await (await control.get("/v1/services", headers=ADMIN)).json()
            assert _healthy(services, "hello") == 1

            # A crash of the app: torn down, started again after the backoff.
            app = agent.running[first["id"]].app
            assert app is not None
            os.kill(app.pid, signal.SIGKILL)

            async def restarted() -> dict[str, Any] | None:
                found = await running()
                return found if found and found["status"]["restarts"] == 1 else None

            again = await until(restarted)
            assert again["id"] == first["id"]
            async with session.get(f"http://127.0.0.1:{again['status']['port']}/") as answer:
                assert answer.status == 200

            # The spec goes: deregistered, stopped, the allocation released.
            await control.delete("/v1/services/hello/spec", headers=ADMIN)

            # The control plane takes the instance off the node at once; the agent
            # learns it from its long-poll and only then stops it (deregistering
            # first): wait for the agent's side too, not only the node's.
            async def emptied() -> bool:
                node = await _node(control)
                stopped = first["id"] not in agent.running and not agent._stopping
                return bool(node) and not node["instances"] and stopped

            await until(emptied)
            node = await _node(control)
            assert node["cpu_millis_allocated"] == 0
            services = await (await control.get("/v1/services", headers=ADMIN)).json()
            # Deregistered, not left to lapse: no instance of hello is left at all.
            assert _registered(services, "hello") == 0
            assert _healthy(services, "hello") == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert agent.running == {}


async def _node(control: TestClient[Any, Any]) -> dict[str, Any] | None:
    body = await (await control.get("/v1/nodes", headers=ADMIN)).json()
    return body["nodes"][0] if body["nodes"] else None


def _registered(services: dict[str, Any], name: str) -> int:
    for service in services["services"]:
        if service["name"] == name:
            return int(service["instances"])
    return 0


def _healthy(services: dict[str, Any], name: str) -> int:
    for service in services["services"]:
        if service["name"] == name:
            return int(service["healthy"])
    return 0


async def test_agent_registers_again_when_its_node_lapsed(
    control: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = str(control.make_url("")).rstrip("/")
    registration = NodeRegistration(id="n1", cpu="1000m", memory="1Gi")
    book = control.app[AGENTS].book
    async with aiohttp.ClientSession() as session:
        agent = Agent(
            Channel(session, url, "admin-secret"),
            registration,
            tmp_path / "agent",
            limits=Limits(None),
            report_every=0.1,
        )
        task = asyncio.create_task(agent.run(session))
        try:
            await until(lambda: _node(control))
            first = book.nodes["n1"].registered
            # As if the agent had been silent for longer than the node TTL.
            book.lapse(book.nodes["n1"].last_seen + 1000.0, 15.0)
            assert book.nodes["n1"].down

            async def back() -> bool:
                record = book.nodes["n1"]
                return not record.down and record.registered > first

            await until(back, 10.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_sidecar_bootstrap_serves_inbound_only_in_dynamic_mode() -> None:
    config = sidecar_bootstrap("ratings-1", "ratings", "http://127.0.0.1:1", "t", 8080, "a")
    assert config["node"] == {"id": "ratings-1", "service": "ratings", "upstreams": [], "zone": "a"}
    (listener,) = config["listeners"]
    assert (listener["direction"], listener["local_app"]) == ("inbound", "127.0.0.1:8080")
    assert "snapshot" not in config


@pytest.mark.integration
async def test_sidecar_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(SidecarError, match="exited with"):
        await start_sidecar(tmp_path / "missing.yaml", timeout_s=20)
