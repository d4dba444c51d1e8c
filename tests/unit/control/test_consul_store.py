"""The Consul KV store through the Consul double: check-and-set commits, history,
replicas racing, and what happens when Consul is away."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.registry.local import Instance, InstanceSpec
from control.service import ControlPlane
from control.settings import ControlSettings
from control.state import DesiredState, parse_resource
from control.store import Change, StoreError, VersionConflict
from control.store.consul import ConsulAddress, ConsulStore, follow_replicas
from tests.consul_double import ConsulDouble, eventually

ADMIN = {"Authorization": "Bearer admin-secret"}


def _state(*subsets: str) -> DesiredState:
    body = {"subsets": {s: {"labels": {"version": s}} for s in subsets}}
    return DesiredState().with_resource(
        "policies", "ratings", parse_resource("policies", "ratings", body)
    )


def _put(subset: str) -> Change:
    return Change("admin", "put", "policies/ratings", subset, _state(subset))


@pytest.fixture
async def store(double: ConsulDouble) -> AsyncIterator[ConsulStore]:
    s = ConsulStore(ConsulAddress.parse(double.url), prefix="test")
    yield s
    s.close()


def test_consul_http_addr_forms_are_parsed_and_nonsense_is_refused() -> None:
    assert ConsulAddress.parse("10.0.0.5:8500") == ConsulAddress("10.0.0.5", 8500, "http")
    assert ConsulAddress.parse("https://[::1]:8501", "t") == ConsulAddress(
        "::1", 8501, "https", "t"
    )
    assert ConsulAddress.parse("consul.local").port == 8500
    with pytest.raises(StoreError, match="CONSUL_HTTP_ADDR"):
        ConsulAddress.parse("ftp://x:1")
    with pytest.raises(StoreError, match="bad port"):
        ConsulAddress.parse("host:99999")


async def test_an_empty_prefix_loads_as_version_zero(store: ConsulStore) -> None:
    loaded = await asyncio.to_thread(store.load)
    assert (loaded.version, loaded.state, loaded.instances) == (0, DesiredState(), [])
    assert await asyncio.to_thread(store.history, 10) == []


async def test_commits_move_the_version_and_keep_state_and_instances(
    store: ConsulStore, double: ConsulDouble
) -> None:
    spec = InstanceSpec(service="ratings", address="127.0.0.1", port=9001, ttl="10s")
    register = Change(
        "admin", "register", "instances/r1", "r1", put_instances=(Instance("r1", spec),)
    )

    def run() -> None:
        assert store.commit(0, _put("v1"), 1.0) == 1
        assert store.commit(1, register, 2.0) == 2
        assert store.commit(2, _put("v2"), 3.0) == 3

    await asyncio.to_thread(run)
    loaded = await asyncio.to_thread(store.load)
    assert loaded.version == 3 and loaded.state == _state("v2")
    assert loaded.instances == [Instance("r1", spec)]
    history = await asyncio.to_thread(store.history, 10)
    assert [(e.version, e.action, e.state_changed) for e in history] == [
        (3, "put", True),
        (2, "register", False),
        (1, "put", True),
    ]
    assert [e.version for e in await asyncio.to_thread(store.history, 10, 3)] == [2, 1]
    # A version that did not change the state has the state of the one before it.
    assert await asyncio.to_thread(store.state_at, 2) == _state("v1")
    assert await asyncio.to_thread(store.state_at, 0) == DesiredState()
    assert await asyncio.to_thread(store.state_at, 4) is None
    assert await asyncio.to_thread(store.entry, 9) is None
    keys = sorted(k for k in double.state.kv if k.startswith("test/"))
    assert keys == ["test/head"] + [f"test/history/{v:012d}" for v in (1, 2, 3)]


async def test_a_commit_on_a_stale_version_is_a_conflict_naming_the_actual_one(
    store: ConsulStore,
) -> None:
    await asyncio.to_thread(store.commit, 0, _put("v1"), 1.0)
    with pytest.raises(VersionConflict) as err:
        await asyncio.to_thread(store.commit, 0, _put("v2"), 2.0)
    assert (err.value.expected, err.value.actual) == (0, 1)
    assert (await asyncio.to_thread(store.load)).state == _state("v1")


async def test_a_history_copy_lost_after_the_commit_is_written_by_the_next_commit(
    store: ConsulStore, double: ConsulDouble
) -> None:
    await asyncio.to_thread(store.commit, 0, _put("v1"), 1.0)
    # As if the committer died between its check-and-set and the history copy.
    del double.state.kv["test/history/000000000001"]
    assert [e.version for e in await asyncio.to_thread(store.history, 10)] == [1]
    await asyncio.to_thread(store.commit, 1, _put("v2"), 2.0)
    assert "test/history/000000000001" in double.state.kv
    assert await asyncio.to_thread(store.state_at, 1) == _state("v1")


async def test_two_stores_racing_never_lose_a_commit(double: ConsulDouble) -> None:
    stores = [ConsulStore(ConsulAddress.parse(double.url), prefix="race") for _ in range(2)]
    won: list[list[int]] = [[], []]
    conflicts = [0, 0]
    barrier = threading.Barrier(2)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(15):
            change = Change(f"replica{n}", "health", "instances", f"{n}-{i}")
            while True:  # what the control plane does: learn the version, retry
                expected = stores[n].load().version
                try:
                    won[n].append(stores[n].commit(expected, change, float(i)))
                    break
                except VersionConflict:
                    conflicts[n] += 1

    try:
        await asyncio.gather(asyncio.to_thread(writer, 0), asyncio.to_thread(writer, 1))
        history = await asyncio.to_thread(stores[0].history, 100)
    finally:
        for s in stores:
            s.close()
    assert sorted(won[0] + won[1]) == list(range(1, 31))
    assert won[0] == sorted(won[0]) and won[1] == sorted(won[1])
    assert [e.version for e in history] == list(range(30, 0, -1))
    assert {e.summary for e in history} == {f"{n}-{i}" for n in (0, 1) for i in range(15)}


@pytest.fixture
async def replicas(double: ConsulDouble) -> AsyncIterator[list[TestClient[Any, Any]]]:
    settings = ControlSettings(
        admin_token="admin-secret", store="consul", consul_http_addr=double.url, tick=0.05
    )
    clients = []
    for _ in range(2):
        app = build_app(settings, ConsulStore(ConsulAddress.parse(double.url)))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
    yield clients
    for client in clients:
        await client.close()


async def test_two_replicas_writing_at_once_both_land_and_each_sees_both(
    replicas: list[TestClient[Any, Any]],
) -> None:
    a, b = replicas
    policies = [
        (a if n % 2 else b, f"svc{n}", {"subsets": {"v1": {"labels": {"version": "v1"}}}})
        for n in range(8)
    ]
    answers = await asyncio.gather(
        *(c.put(f"/v1/policies/{name}", json=body, headers=ADMIN) for c, name, body in policies)
    )
    assert [r.status for r in answers] == [200] * 8
    versions = sorted([(await r.json())["version"] for r in answers])
    assert versions == list(range(1, 9))
    for client in (a, b):

        async def caught_up(client: TestClient[Any, Any] = client) -> bool:
            return bool((await (await client.get("/healthz")).json())["version"] == 8)

        await eventually(caught_up)
        for _, name, _ in policies:
            assert (await client.get(f"/v1/policies/{name}", headers=ADMIN)).status == 200


async def test_a_replica_wakes_its_proxies_on_another_replicas_commit(
    replicas: list[TestClient[Any, Any]],
) -> None:
    a, b = replicas
    query = {"node": "p1", "service": "ratings", "wait": "5s"}
    first = await b.get("/v1/snapshot", params=query, headers=ADMIN)
    index = (await first.json())["version"]
    poll = asyncio.create_task(
        b.get("/v1/snapshot", params={**query, "index": str(index)}, headers=ADMIN)
    )
    await asyncio.sleep(0.1)
    body = {"subsets": {"v1": {"labels": {"version": "v1"}}}}
    assert (await a.put("/v1/policies/ratings", json=body, headers=ADMIN)).status == 200
    async with asyncio.timeout(4):
        woken = await poll
    assert woken.status == 200
    snapshot = (await woken.json())["snapshot"]
    assert [p["service"] for p in snapshot["policies"]] == ["ratings"]


async def test_consul_down_is_a_503_on_writes_and_the_replica_recovers(
    replicas: list[TestClient[Any, Any]], double: ConsulDouble
) -> None:
    a, _ = replicas
    body = {"subsets": {"v1": {"labels": {"version": "v1"}}}}
    double.down = True
    refused = await a.put("/v1/policies/ratings", json=body, headers=ADMIN)
    assert refused.status == 503
    assert "store is unavailable" in (await refused.json())["error"]
    double.down = False
    assert (await a.put("/v1/policies/ratings", json=body, headers=ADMIN)).status == 200


async def test_follow_replicas_refreshes_on_each_commit_and_survives_an_outage(
    store: ConsulStore, double: ConsulDouble
) -> None:
    seen: list[int] = []
    other = ConsulStore(ConsulAddress.parse(double.url), prefix="test")

    async def refresh() -> bool:
        seen.append((await asyncio.to_thread(store.load)).version)
        return True

    task = asyncio.create_task(
        follow_replicas(store, refresh, wait="1s", backoff_base=0.05, backoff_cap=0.2)
    )
    try:
        await asyncio.to_thread(other.commit, 0, _put("v1"), 1.0)
        await eventually(lambda: 1 in seen)
        await double.stop()  # connection refused for a while
        await asyncio.sleep(0.3)
        await double.start()
        double.reset_indices()  # and it came back with its indices restarted
        await asyncio.to_thread(other.commit, 1, _put("v2"), 2.0)
        await eventually(lambda: 2 in seen, within=8)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        other.close()
    assert json.loads(double.state.kv["test/head"].value)["version"] == 2


async def test_a_control_plane_on_consul_restarts_with_every_resource(
    double: ConsulDouble,
) -> None:
    first = ControlPlane(ConsulStore(ConsulAddress.parse(double.url)))
    await first.start()
    await first.put_resource("policies", "ratings", {"subsets": {}}, "admin")
    await first.close()
    second = ControlPlane(ConsulStore(ConsulAddress.parse(double.url)))
    await second.start()
    try:
        assert second.version == 1 and "ratings" in second.state.policies
    finally:
        await second.close()
