"""Specs, nodes and the agents' long-poll through the API (an aiohttp test server on
127.0.0.1): the reconcile loop places instances, pushes them to the node's agent,
takes its status as ACK and load, and shows every decision at /v1/decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}
SPEC = {
    "command": ["python", "-m", "app"],
    "env": {"MODE": "test"},
    "cpu": "250m",
    "memory": "128Mi",
    "min_replicas": 2,
    "max_replicas": 4,
    "autoscaling": {"target": 5, "stable_window": "6s", "scale_down_stabilization": "5s"},
}
NODE = {"id": "n1", "cpu": "2000m", "memory": "2Gi", "zone": "a", "labels": {"disk": "ssd"}}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(
        admin_token="admin-secret", read_token="read-secret", data_dir=tmp_path, tick=0.02
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_spec_round_trips_and_refuses_bad_fields(client: TestClient[Any, Any]) -> None:
    bad = await client.put("/v1/services/ratings/spec", json={**SPEC, "cpu": "x"}, headers=ADMIN)
    assert bad.status == 422
    assert (await bad.json())["problems"][0]["field"] == "cpu"
    assert (await client.get("/v1/services/ratings/spec", headers=ADMIN)).status == 404
    put = await client.put("/v1/services/ratings/spec", json=SPEC, headers=ADMIN)
    assert put.status == 200
    got = await (await client.get("/v1/services/ratings/spec", headers=ADMIN)).json()
    assert got["spec"]["env"] == {"MODE": "test"}
    assert got["spec"]["autoscaling"]["stable_window"] == 6.0
    unauthorized = await client.put("/v1/services/ratings/spec", json=SPEC)
    assert unauthorized.status == 401


async def test_env_values_are_hidden_from_read_tokens(client: TestClient[Any, Any]) -> None:
    await client.put("/v1/services/ratings/spec", json=SPEC, headers=ADMIN)
    seen = await (await client.get("/v1/services/ratings/spec", headers=READER)).json()
    assert seen["spec"]["env"] == {"MODE": "(hidden)"}
    await client.post("/v1/nodes", json=NODE, headers=ADMIN)
    # The assignments carry the env as is, so only write tokens (agents) may poll them.
    assert (await client.get("/v1/agent/assignments?node=n1", headers=READER)).status == 403


async def test_agent_receives_placements_and_its_status_acks_them(
    client: TestClient[Any, Any],
) -> None:
    registered = await client.post("/v1/nodes", json=NODE, headers=ADMIN)
    assert registered.status == 200
    first = await (await client.get("/v1/agent/assignments?node=n1", headers=ADMIN)).json()
    assert first["instances"] == []
    poll = asyncio.create_task(
        client.get(f"/v1/agent/assignments?node=n1&index={first['index']}&wait=5s", headers=ADMIN)
    )
    await client.put("/v1/services/ratings/spec", json=SPEC, headers=ADMIN)
    answer = await asyncio.wait_for(poll, 5)
    body = await answer.json()
    # The long-poll wakes at the first change; the two placements may come in one or two.
    while len(body["instances"]) < 2:
        again = f"/v1/agent/assignments?node=n1&index={body['index']}&wait=5s"
        body = await (await client.get(again, headers=ADMIN)).json()
    assert [i["service"] for i in body["instances"]] == ["ratings", "ratings"]
    assert body["instances"][0]["spec"]["command"] == ["python", "-m", "app"]

    status = {
        "node": "n1",
        "index": body["index"],
        "instances": [
            {"id": i["id"], "state": "running", "port": 20000 + n, "limits": "rlimit"}
            for n, i in enumerate(body["instances"])
        ],
    }
    assert (await client.post("/v1/agent/status", json=status, headers=ADMIN)).status == 200
    nodes = await (await client.get("/v1/nodes", headers=ADMIN)).json()
    (n1,) = nodes["nodes"]
    assert n1["acked_index"] == body["index"]
    assert n1["cpu_millis_allocated"] == 500
    assert {i["status"]["state"] for i in n1["instances"]} == {"running"}

    decisions = await (await client.get("/v1/decisions?service=ratings", headers=ADMIN)).json()
    actions = [(d["source"], d["action"]) for d in decisions["decisions"]]
    assert actions[-1] == ("autoscaler", "scale")
    assert actions.count(("scheduler", "place")) == 2
    assert "min_replicas 2" in decisions["decisions"][-1]["reason"]


async def test_unknown_node_is_404_and_unchanged_index_is_304(
    client: TestClient[Any, Any],
) -> None:
    assert (await client.get("/v1/agent/assignments?node=nope", headers=ADMIN)).status == 404
    missing = {"node": "nope", "index": 0, "instances": []}
    assert (await client.post("/v1/agent/status", json=missing, headers=ADMIN)).status == 404
    await client.post("/v1/nodes", json=NODE, headers=ADMIN)
    first = await (await client.get("/v1/agent/assignments?node=n1", headers=ADMIN)).json()
    url = f"/v1/agent/assignments?node=n1&index={first['index']}&wait=100ms"
    assert (await client.get(url, headers=ADMIN)).status == 304


async def test_deleting_the_spec_takes_the_instances_off_the_node(
    client: TestClient[Any, Any],
) -> None:
    await client.post("/v1/nodes", json=NODE, headers=ADMIN)
    await client.put("/v1/services/ratings/spec", json=SPEC, headers=ADMIN)
    for _ in range(100):
        got = await (await client.get("/v1/services/ratings/spec", headers=ADMIN)).json()
        if len(got["instances"]) == 2:
            break
        await asyncio.sleep(0.05)
    assert (await client.delete("/v1/services/ratings/spec", headers=ADMIN)).status == 200
    for _ in range(100):
        body = await (await client.get("/v1/agent/assignments?node=n1", headers=ADMIN)).json()
        if not body["instances"]:
            break
        await asyncio.sleep(0.05)
    assert body["instances"] == []
    removed = await (await client.get("/v1/decisions?source=scheduler", headers=ADMIN)).json()
    assert [d["action"] for d in removed["decisions"][:2]] == ["remove", "remove"]
