"""The API in-process (aiohttp test server on 127.0.0.1, a temporary SQLite file)."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control.api.openapi import OPENAPI_PATH
from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}}}
ROUTE = {"rules": [{"backends": [{"subset": "v1"}], "timeout": "2s"}]}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(
        admin_token="admin-secret", read_token="read-secret", data_dir=tmp_path, tick=0.05
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_every_registered_route_is_documented_and_vice_versa(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(OPENAPI_PATH)
    doc = await response.json()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    registered = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == registered
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    ref = doc["paths"]["/v1/routes/{service}"]["put"]["requestBody"]["content"]
    assert ref["application/json"]["schema"]["$ref"] == "#/components/schemas/RouteTable"
    assert "RouteTable" in schemas and "InstanceSpec" in schemas


async def test_no_token_is_401_and_a_read_token_on_a_write_is_403(
    client: TestClient[Any, Any],
) -> None:
    assert (await client.get("/v1/services")).status == 401
    wrong = await client.get("/v1/services", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/v1/services", headers=READER)).status == 200
    assert (await client.put("/v1/policies/ratings", json=POLICY, headers=READER)).status == 403
    assert (await client.get("/healthz")).status == 200


async def test_put_get_delete_round_trip_bumps_the_version(client: TestClient[Any, Any]) -> None:
    assert (
        await (await client.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)).json()
    ) == {"version": 1}
    put = await client.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)
    assert (await put.json())["version"] == 2
    got = await (await client.get("/v1/routes/ratings", headers=READER)).json()
    assert got["service"] == "ratings" and got["rules"][0]["timeout"] == "2s"
    deleted = await client.delete("/v1/routes/ratings", headers=ADMIN)
    assert (await deleted.json())["version"] == 3
    assert (await client.get("/v1/routes/ratings", headers=READER)).status == 404
    assert (await client.delete("/v1/routes/ratings", headers=ADMIN)).status == 404


async def test_bad_json_is_400_and_invalid_fields_are_422_with_their_path(
    client: TestClient[Any, Any],
) -> None:
    bad = await client.put("/v1/policies/ratings", data=b"{nope", headers=ADMIN)
    assert bad.status == 400
    invalid = await client.put(
        "/v1/policies/ratings", json={"load_balancer": {"policy": "fastest"}}, headers=ADMIN
    )
    assert invalid.status == 422
    body = await invalid.json()
    assert body["problems"][0]["field"] == "load_balancer.policy"
    unknown = await client.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)
    assert unknown.status == 422
    assert (await unknown.json())["problems"][0]["field"].endswith("backends.0.subset")
    bad_name = await client.put("/v1/policies/..%2F", json=POLICY, headers=ADMIN)
    assert bad_name.status in (404, 422)
    history = await (await client.get("/v1/history", headers=READER)).json()
    assert history == {"version": 0, "entries": []}


async def test_deleting_a_policy_a_route_needs_is_refused(client: TestClient[Any, Any]) -> None:
    await client.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)
    await client.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)
    refused = await client.delete("/v1/policies/ratings", headers=ADMIN)
    assert refused.status == 422
    assert (await client.get("/v1/policies/ratings", headers=READER)).status == 200


async def test_rollback_restores_an_earlier_desired_state_as_a_new_version(
    client: TestClient[Any, Any],
) -> None:
    await client.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)
    two = {"subsets": {"v1": {"labels": {"version": "v1"}}, "v2": {"labels": {"version": "v2"}}}}
    await client.put("/v1/policies/ratings", json=two, headers=ADMIN)
    rolled = await client.post("/v1/rollback", json={"version": 1}, headers=ADMIN)
    assert (await rolled.json()) == {"version": 3}
    policy = await (await client.get("/v1/policies/ratings", headers=READER)).json()
    assert set(policy["subsets"]) == {"v1"}
    history = await (await client.get("/v1/history", headers=READER)).json()
    assert [(e["version"], e["action"], e["actor"]) for e in history["entries"]] == [
        (3, "rollback", "admin"),
        (2, "put", "admin"),
        (1, "put", "admin"),
    ]
    at_two = await (await client.get("/v1/history/2", headers=READER)).json()
    assert set(at_two["state"]["policies"]["ratings"]["subsets"]) == {"v1", "v2"}
    missing = await client.post("/v1/rollback", json={"version": 99}, headers=ADMIN)
    assert missing.status == 404


async def test_instances_register_heartbeat_show_and_deregister(
    client: TestClient[Any, Any],
) -> None:
    spec = {"service": "ratings", "address": "127.0.0.1", "port": 9001, "ttl": "30s"}
    created = await client.post("/v1/instances", json=spec, headers=ADMIN)
    assert created.status == 201
    instance_id = (await created.json())["id"]
    beat = await client.put(f"/v1/instances/{instance_id}/heartbeat", headers=ADMIN)
    assert beat.status == 200
    listed = await (await client.get("/v1/services", headers=READER)).json()
    assert listed["services"][0] | {"name": "ratings"} == {
        "name": "ratings",
        "instances": 1,
        "healthy": 1,
        "routes": False,
        "policy": False,
        "access": False,
    }
    assert (await client.delete(f"/v1/instances/{instance_id}", headers=ADMIN)).status == 200
    gone = await client.put(f"/v1/instances/{instance_id}/heartbeat", headers=ADMIN)
    assert gone.status == 404
    neither = await client.post("/v1/instances", json={**spec, "ttl": None}, headers=ADMIN)
    assert neither.status == 422


async def test_snapshot_poll_validates_its_query_and_times_out_with_304(
    client: TestClient[Any, Any],
) -> None:
    bad = await client.get("/v1/snapshot?node=a&service=b&wait=5", headers=READER)
    assert bad.status == 422
    assert (await bad.json())["problems"][0]["field"] == "query.wait"
    first = await client.get("/v1/snapshot?node=a&service=b&wait=1s", headers=READER)
    body = await first.json()
    assert first.status == 200 and body["version"] == 0
    again = await client.get(
        f"/v1/snapshot?node=a&service=b&index={body['version']}&wait=50ms", headers=READER
    )
    assert again.status == 304


async def _healthy(client: TestClient[Any, Any], instance_id: str) -> bool:
    listed = await (await client.get("/v1/services", headers=READER)).json()
    return next(i["healthy"] for i in listed["instances"] if i["id"] == instance_id)


async def test_lapsed_ttl_and_failing_http_check_take_instances_out_and_bump_the_version(
    client: TestClient[Any, Any],
) -> None:
    status = {"code": 200}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=status["code"])

    app = web.Application()
    app.router.add_get("/health", health)
    async with TestServer(app, host="127.0.0.1") as upstream:
        checked = {
            "service": "ratings",
            "address": "127.0.0.1",
            "port": upstream.port,
            "check": {"path": "/health", "interval": "50ms"},
        }
        ttl = {"service": "details", "address": "127.0.0.1", "port": 9002, "ttl": "100ms"}
        check_id = (await (await client.post("/v1/instances", json=checked, headers=ADMIN)).json())[
            "id"
        ]
        ttl_id = (await (await client.post("/v1/instances", json=ttl, headers=ADMIN)).json())["id"]
        status["code"] = 503
        for _ in range(100):
            if not await _healthy(client, check_id) and not await _healthy(client, ttl_id):
                break
            await asyncio.sleep(0.05)
        assert not await _healthy(client, check_id)
        assert not await _healthy(client, ttl_id)
        status["code"] = 200
        for _ in range(100):
            if await _healthy(client, check_id):
                break
            await asyncio.sleep(0.05)
        assert await _healthy(client, check_id)
    history = await (await client.get("/v1/history", headers=READER)).json()
    actions = [e["action"] for e in history["entries"]]
    assert actions.count("health") >= 3 and actions[-2:] == ["register", "register"]
