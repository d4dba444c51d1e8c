"""A control-plane restart through the API (aiohttp test servers on 127.0.0.1 over one
SQLite file): specs come back from the store, an agent's registration carrying its
instances is answered with what was adopted, and the first long-poll lists them.
The agent's side: what it keeps and what it stops after registering again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from control.agent.agent import Agent
from control.agent.channel import Adoption
from control.agent.limits import Limits
from control.app import build_app
from control.nodes import Assignment, NodeRegistration, ServiceSpec
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
SPEC = {"command": ["python", "-m", "app"], "cpu": "250m", "memory": "128Mi",
        "min_replicas": 2, "max_replicas": 2}  # fmt: skip
NODE = {"id": "n1", "cpu": "2000m", "memory": "2Gi", "zone": "a"}


@asynccontextmanager
async def control(tmp_path: Path, grace: float = 0.3) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(
        admin_token="admin-secret", data_dir=tmp_path, tick=0.02, restart_grace=grace
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def until(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    for _ in range(int(seconds / 0.02)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("not within the time allowed")


async def assigned(client: TestClient[Any, Any]) -> list[dict[str, Any]] | None:
    body = await (await client.get("/v1/agent/assignments?node=n1", headers=ADMIN)).json()
    found: list[dict[str, Any]] = body["instances"]
    return found if len(found) == 2 else None


async def test_a_restarted_control_plane_adopts_what_the_agent_runs(tmp_path: Path) -> None:
    async with control(tmp_path) as first:
        await first.post("/v1/nodes", json=NODE, headers=ADMIN)
        assert (await first.put("/v1/services/web/spec", json=SPEC, headers=ADMIN)).status == 200
        running = await until(lambda: assigned(first))

    async with control(tmp_path) as second:
        spec = await (await second.get("/v1/services/web/spec", headers=ADMIN)).json()
        assert spec["spec"]["min_replicas"] == 2 and spec["instances"] == []
        registered = await second.post(
            "/v1/nodes", json={**NODE, "instances": running}, headers=ADMIN
        )
        assert registered.status == 200
        body = await registered.json()
        ids = [i["id"] for i in running]
        assert body["adopted"] == ids and body["refused"] == []
        assert body["registration"].get("instances", []) == []
        assert [i["id"] for i in body["instances"]] == ids
        first_answer = await assigned(second)
        assert first_answer == running
        await asyncio.sleep(0.6)  # past the grace: no more, no fewer
        assert await assigned(second) == running
        decisions = await (await second.get("/v1/decisions?service=web", headers=ADMIN)).json()
        assert [d for d in decisions["decisions"] if d["action"] in ("place", "remove")] == []
        assert (await second.delete("/v1/services/web/spec", headers=ADMIN)).status == 200

    async with control(tmp_path) as third:
        assert (await third.get("/v1/services/web/spec", headers=ADMIN)).status == 404


async def test_the_registration_answer_is_described_in_openapi(tmp_path: Path) -> None:
    async with control(tmp_path) as client:
        doc = await (await client.get("/openapi.json")).json()
        schemas = doc["components"]["schemas"]
        assert {"adopted", "refused"} <= set(schemas["NodeRegistered"]["properties"])
        assert "instances" in schemas["NodeRegistration"]["properties"]


# -- the agent's side ------------------------------------------------------------------


class FakeChannel:
    def __init__(self, adoption: Adoption | None) -> None:
        self.adoption = adoption
        self.carried: list[list[str]] = []

    async def register_node(self, registration: NodeRegistration) -> Adoption | None:
        self.carried.append([a.id for a in registration.instances])
        return self.adoption


class FakeRunner:
    def __init__(self, instance: str) -> None:
        self.assignment = Assignment(id=instance, service="web", spec=ServiceSpec(command=["x"]))
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


def agent_with(channel: FakeChannel, tmp_path: Path, *ids: str) -> tuple[Agent, list[FakeRunner]]:
    registration = NodeRegistration(id="n1", cpu="2000m", memory="2Gi")
    agent = Agent(channel, registration, tmp_path, limits=Limits(None))  # type: ignore[arg-type]
    runners = [FakeRunner(i) for i in ids]
    agent.running = {r.assignment.id: r for r in runners}  # type: ignore[misc]
    return agent, runners


async def test_agent_carries_its_instances_and_stops_only_what_was_refused_or_removed(
    tmp_path: Path,
) -> None:
    channel = FakeChannel(Adoption(frozenset({"web-1", "web-2"}), {"web-3": "assigned to n2"}))
    agent, (one, two, three) = agent_with(channel, tmp_path, "web-1", "web-2", "web-3")
    await agent._register()
    assert channel.carried == [["web-1", "web-2", "web-3"]]
    assert agent.held == set()
    agent.apply([one.assignment])  # web-2 adopted then removed, web-3 refused: both stop
    await asyncio.sleep(0)
    assert (one.stopped, two.stopped, three.stopped) == (False, True, True)
    assert list(agent.running) == ["web-1"]


async def test_agent_holds_instances_a_control_plane_did_not_adopt(tmp_path: Path) -> None:
    agent, (one, two) = agent_with(FakeChannel(None), tmp_path, "web-1", "web-2")
    await agent._register()
    assert agent.held == {"web-1", "web-2"}
    agent.apply([])  # the first answer of a control plane that does not adopt
    await asyncio.sleep(0)
    assert not one.stopped and not two.stopped
    assert set(agent.running) == {"web-1", "web-2"}
    agent.apply([one.assignment])  # listed again: managed again
    assert agent.held == {"web-2"}
    agent.apply([])  # now a real removal of web-1, with the graceful stop
    await asyncio.sleep(0)
    assert one.stopped and not two.stopped
