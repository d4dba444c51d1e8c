"""Rollouts through the API: the driver writes route weights on the routes' write
path, records why, and rolls a failing canary back (aiohttp test servers on
127.0.0.1: the control plane, and a stand-in sidecar ``/metrics``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}, "v2": {"labels": {"version": "v2"}}}}
ROUTE = {"rules": [{"backends": [{"subset": "v1"}], "timeout": "2s"}]}


class FakeSidecar:
    """A caller's sidecar ``/metrics`` whose canary counters the test moves."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def exposition(self) -> str:
        labels = (
            'direction="outbound",source_service="web",destination_service="ratings",'
            'destination_subset="v2",route="0"'
        )
        total = self.ok + self.failed
        flags = 'response_flags="-"'
        return (
            "# TYPE meshproxy_requests_total counter\n"
            f'meshproxy_requests_total{{{labels},response_code="200",{flags}}} {self.ok}\n'
            f'meshproxy_requests_total{{{labels},response_code="503",{flags}}} {self.failed}\n'
            "# TYPE meshproxy_request_duration_seconds histogram\n"
            f'meshproxy_request_duration_seconds_bucket{{{labels},le="0.01"}} {total}\n'
            f'meshproxy_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}\n'
            f"meshproxy_request_duration_seconds_sum{{{labels}}} 0.1\n"
            f"meshproxy_request_duration_seconds_count{{{labels}}} {total}\n"
        )

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(text=self.exposition())


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[FakeSidecar, str]]:
    fake = FakeSidecar()
    app = web.Application()
    app.router.add_get("/metrics", fake.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield fake, str(server.make_url("/metrics"))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(admin_token="admin-secret", data_dir=tmp_path, tick=0.02)
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        assert (await c.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)).status == 200
        assert (await c.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)).status == 200
        yield c


def rollout_body(url: str, **kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "stable": "v1",
        "canary": "v2",
        "step_weight": 25,
        "max_weight": 50,
        "interval": "150ms",
        "failure_threshold": 2,
        "error_budget": 20,
        "metrics": {"kind": "sidecars", "urls": [url]},
    }
    body.update(kw)
    return body


async def weights(c: TestClient[Any, Any]) -> list[tuple[str, int]]:
    table = await (await c.get("/v1/routes/ratings", headers=ADMIN)).json()
    return [(b["subset"], b["weight"]) for b in table["rules"][0]["backends"]]


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def phase(c: TestClient[Any, Any]) -> str:
    body = await (await c.get("/v1/rollouts/ratings", headers=ADMIN)).json()
    return str(body["phase"])


async def test_put_writes_the_first_weight_and_records_why(
    client: TestClient[Any, Any], sidecar: tuple[FakeSidecar, str]
) -> None:
    _, url = sidecar
    response = await client.put("/v1/rollouts/ratings", json=rollout_body(url), headers=ADMIN)
    assert response.status == 200
    view = await response.json()
    assert view["phase"] == "progressing" and view["canary_weight"] == 25
    assert await weights(client) == [("v1", 75), ("v2", 25)]
    history = await (await client.get("/v1/history", headers=ADMIN)).json()
    newest = history["entries"][0]
    assert newest["target"] == "routes/ratings" and "canary started at 25%" in newest["summary"]
    decided = await (await client.get("/v1/decisions?source=rollout", headers=ADMIN)).json()
    assert decided["decisions"][0]["action"] == "set_weight"
    assert decided["decisions"][0]["actor"] == "admin"


async def test_a_healthy_canary_is_promoted_step_by_step(
    client: TestClient[Any, Any], sidecar: tuple[FakeSidecar, str]
) -> None:
    fake, url = sidecar
    await client.put("/v1/rollouts/ratings", json=rollout_body(url), headers=ADMIN)

    async def promoted() -> bool:
        fake.ok += 10
        return await phase(client) == "promoted"

    async def canary_only() -> bool:
        return await weights(client) == [("v1", 0), ("v2", 100)]

    await until(promoted)
    # The phase is the decision; the weights follow once the driver's write is in.
    await until(canary_only)
    view = await (await client.get("/v1/rollouts/ratings", headers=ADMIN)).json()
    steps = [d["action"] for d in reversed(view["decisions"])]
    assert steps == ["set_weight", "set_weight", "promote"]


async def test_a_failing_canary_is_rolled_back_before_it_spends_more_than_its_budget(
    client: TestClient[Any, Any], sidecar: tuple[FakeSidecar, str]
) -> None:
    fake, url = sidecar
    await client.put("/v1/rollouts/ratings", json=rollout_body(url, interval="1m"), headers=ADMIN)

    async def view() -> dict[str, Any]:
        return dict(await (await client.get("/v1/rollouts/ratings", headers=ADMIN)).json())

    async def decided() -> bool:
        # v2 fails every request the routes send it, one at a time: the next one
        # only once the driver has counted the last, so the budget is judged at
        # every failed request whatever the load on the machine.
        now = await view()
        if now["phase"] == "rolled_back":
            return True
        if now["spent"] == fake.failed and (await weights(client))[1][1] > 0:
            fake.failed += 1
        return False

    async def stable_only() -> bool:
        return await weights(client) == [("v1", 100), ("v2", 0)]

    await until(decided)
    # The phase is the decision, taken in the same driver call that counted the
    # 20th failure; the driver writes the weights right after it (through the
    # store, on its thread), sampling nothing more, so the routes follow shortly.
    await until(stable_only)
    assert fake.failed == 20
    final = await view()
    assert final["phase"] == "rolled_back" and final["spent"] == 20
    assert final["canary_weight"] == 0
    history = await (await client.get("/v1/history", headers=ADMIN)).json()
    assert "error budget spent: 20 failed canary requests" in history["entries"][0]["summary"]


async def test_delete_rolls_back_a_rollout_in_progress_and_forgets_it(
    client: TestClient[Any, Any], sidecar: tuple[FakeSidecar, str]
) -> None:
    _, url = sidecar
    body = rollout_body(url, interval="1m")
    await client.put("/v1/rollouts/ratings", json=body, headers=ADMIN)
    again = await client.put("/v1/rollouts/ratings", json=body, headers=ADMIN)
    assert again.status == 422 and "in progress" in (await again.json())["problems"][0]["message"]
    assert (await client.delete("/v1/rollouts/ratings", headers=ADMIN)).status == 200
    assert await weights(client) == [("v1", 100), ("v2", 0)]
    assert (await client.get("/v1/rollouts/ratings", headers=ADMIN)).status == 404
    assert (await client.delete("/v1/rollouts/ratings", headers=ADMIN)).status == 404


async def test_a_rollout_to_an_undeclared_subset_is_refused_and_not_kept(
    client: TestClient[Any, Any], sidecar: tuple[FakeSidecar, str]
) -> None:
    _, url = sidecar
    response = await client.put(
        "/v1/rollouts/ratings", json=rollout_body(url, canary="v3"), headers=ADMIN
    )
    assert response.status == 422
    problems = (await response.json())["problems"]
    assert any("unknown subset 'v3'" in p["message"] for p in problems)
    assert (await client.get("/v1/rollouts", headers=ADMIN)).status == 200
    assert (await (await client.get("/v1/rollouts", headers=ADMIN)).json())["rollouts"] == []
    assert await weights(client) == [("v1", 1)]


async def test_bad_rollout_bodies_name_the_field(client: TestClient[Any, Any]) -> None:
    bad = await client.put(
        "/v1/rollouts/ratings",
        json={"stable": "v1", "canary": "v2", "step_weight": 0},
        headers=ADMIN,
    )
    assert bad.status == 422
    assert (await bad.json())["problems"][0]["field"] == "step_weight"
    other = await client.put(
        "/v1/rollouts/ratings", json={"service": "x", "stable": "v1", "canary": "v2"}, headers=ADMIN
    )
    assert other.status == 422
    assert (await client.put("/v1/rollouts/ratings", data=b"{", headers=ADMIN)).status == 400
