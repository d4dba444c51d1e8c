"""The Consul catalog registry: the blocking-query rules (sans-IO) and the
watcher against the Consul double, down, refusing connections and reset."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.registry.consul import (
    Backoff,
    BlockingIndex,
    CatalogRegistry,
    CatalogWatcher,
    entries_to_instances,
)
from control.settings import ControlSettings
from control.store.consul import ConsulAddress
from control.store.sqlite import SQLiteStore
from tests.consul_double import ConsulDouble, eventually


def _entry(sid: str, port: object = 9001, statuses: tuple[str, ...] = ("passing",)) -> object:
    return {
        "Node": {"Node": "n1", "Address": "10.1.1.1"},
        "Service": {"ID": sid, "Address": "", "Port": port, "Meta": {"version": "v1", "zone": "a"}},
        "Checks": [{"Status": s} for s in statuses],
    }


def test_an_instance_is_healthy_only_when_every_check_passes() -> None:
    found, refused = entries_to_instances(
        "ratings", [_entry("r2", statuses=("passing", "warning")), _entry("r1")]
    )
    assert refused == []
    assert [(i.id, i.healthy) for i in found] == [("consul:n1/r1", True), ("consul:n1/r2", False)]
    spec = found[0].spec
    assert (spec.address, spec.port, spec.labels, spec.zone) == (
        "10.1.1.1",
        9001,
        {"version": "v1"},
        "a",
    )


def test_entries_that_make_no_valid_endpoint_are_left_out_and_named() -> None:
    found, refused = entries_to_instances("ratings", [_entry("ok"), _entry("bad", port=0), {}])
    assert [i.id for i in found] == ["consul:n1/ok"]
    assert len(refused) == 2 and all(r.startswith("ratings: ") for r in refused)
    assert entries_to_instances("ratings", {"not": "a list"})[1] == [
        "ratings: the answer is not a list"
    ]


def test_an_index_that_goes_backwards_is_reset_to_zero() -> None:
    index = BlockingIndex()
    assert index.advance(10) is True and index.value == 10
    assert index.advance(10) is False and index.value == 10  # a timeout: nothing new
    assert index.advance(4) is True and index.value == 0  # went backwards
    assert index.advance(0) is False and index.value == 1  # never block on 0


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff, rng = Backoff(base=0.5, cap=8.0), random.Random(7)
    delays = [backoff.failed(rng) for _ in range(10)]
    ceilings = [min(8.0, 0.5 * 2**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 8.0 and delays[-1] >= 4.0
    backoff.succeeded()
    assert backoff.failed(rng) <= 0.5


def test_the_catalog_registry_merges_catalog_and_api_instances() -> None:
    registry = CatalogRegistry()
    found, _ = entries_to_instances("ratings", [_entry("r1"), _entry("r2", statuses=("critical",))])
    assert registry.set_service("ratings", found) is True
    assert registry.set_service("ratings", list(found)) is False
    assert registry.services() == {"ratings"}
    assert [e.port for e in registry.healthy_endpoints()["ratings"]] == [9001]
    assert [(s.id, s.healthy) for s in registry.statuses()] == [
        ("consul:n1/r1", True),
        ("consul:n1/r2", False),
    ]
    assert registry.get("consul:n1/r1") is None  # not the API's to deregister
    assert registry.drop_service("ratings") and registry.services() == set()


async def _agent(double: ConsulDouble, path: str, body: object = None) -> None:
    data = json.dumps(body) if body is not None else b""
    async with aiohttp.ClientSession() as s, s.put(double.url + path, data=data) as r:
        assert r.status == 200, await r.text()


async def _register(double: ConsulDouble, sid: str, port: int, passing: bool = True) -> None:
    check = {"TTL": "30s", **({"Status": "passing"} if passing else {})}
    body = {"ID": sid, "Name": "ratings", "Address": "127.0.0.1", "Port": port, "Check": check}
    await _agent(double, "/v1/agent/service/register", body)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, services: list[str]) -> None:
        self.calls.append(services)


@pytest.fixture
async def watched(
    double: ConsulDouble,
) -> AsyncIterator[tuple[CatalogRegistry, CatalogWatcher, Recorder]]:

    registry, recorder = CatalogRegistry(), Recorder()
    watcher = CatalogWatcher(
        ConsulAddress.parse(double.url).client,
        registry,
        recorder,
        wait="1s",
        backoff_base=0.05,
        backoff_cap=0.2,
        rng=random.Random(1),
    )
    task = asyncio.create_task(watcher.run())
    yield registry, watcher, recorder
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _ports(registry: CatalogRegistry) -> list[int]:
    return [e.port for e in registry.healthy_endpoints().get("ratings", [])]


async def test_the_watcher_follows_registrations_and_check_changes(
    double: ConsulDouble, watched: tuple[CatalogRegistry, CatalogWatcher, Recorder]
) -> None:
    registry, _, recorder = watched
    await _register(double, "r1", 9001)
    await eventually(lambda: _ports(registry) == [9001])
    await _register(double, "r2", 9002, passing=False)
    await eventually(lambda: len(registry.statuses()) == 2)
    assert _ports(registry) == [9001]
    await _agent(double, "/v1/agent/check/pass/service:r2")
    await eventually(lambda: _ports(registry) == [9001, 9002])
    await _agent(double, "/v1/agent/check/fail/service:r1")
    await eventually(lambda: _ports(registry) == [9002])
    assert recorder.calls and all(c == ["ratings"] for c in recorder.calls)
    await _agent(double, "/v1/agent/service/deregister/r1")
    await _agent(double, "/v1/agent/service/deregister/r2")
    await eventually(lambda: "ratings" not in registry.services())


async def test_last_known_endpoints_are_kept_while_consul_is_down_or_refusing(
    double: ConsulDouble, watched: tuple[CatalogRegistry, CatalogWatcher, Recorder]
) -> None:
    registry, watcher, _ = watched
    await _register(double, "r1", 9001)
    await eventually(lambda: _ports(registry) == [9001])
    double.down = True  # 503s
    await eventually(lambda: watcher.errors >= 3)
    assert _ports(registry) == [9001]
    await double.stop()  # connection refused
    errors = watcher.errors
    await eventually(lambda: watcher.errors >= errors + 3)
    assert _ports(registry) == [9001]
    double.down = False
    await double.start()
    await _register(double, "r2", 9002)
    await eventually(lambda: _ports(registry) == [9001, 9002])


async def test_after_an_index_reset_later_changes_are_still_seen(
    double: ConsulDouble, watched: tuple[CatalogRegistry, CatalogWatcher, Recorder]
) -> None:
    registry, watcher, _ = watched
    for n in range(5):
        await _register(double, f"r{n}", 9001 + n)
    await eventually(lambda: len(_ports(registry)) == 5)
    double.reset_indices(2)  # below every index the watcher holds
    # The watcher's queries time out with the smaller index, reset to 0, and
    # follow the catalog from there.
    await eventually(lambda: watcher.services_index.value <= 2, within=4)
    await _agent(double, "/v1/agent/check/fail/service:r0")
    await eventually(lambda: len(_ports(registry)) == 4, within=4)


async def test_a_control_plane_with_the_consul_registry_sends_catalog_endpoints(
    double: ConsulDouble, tmp_path: Any
) -> None:
    settings = ControlSettings(
        admin_token="admin-secret", registry="consul", consul_http_addr=double.url, tick=0.05
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    await _register(double, "r1", 9001)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        headers = {"Authorization": "Bearer admin-secret"}
        query = {"node": "p1", "service": "reviews", "wait": "0s"}

        async def has_endpoint() -> bool:
            response = await client.get("/v1/snapshot", params=query, headers=headers)
            services = (await response.json())["snapshot"]["services"]
            return "ratings" in services and len(services["ratings"]["endpoints"]) == 1

        await eventually(has_endpoint)
        listed = await (await client.get("/v1/services", headers=headers)).json()
        assert [i["id"] for i in listed["instances"]] == ["consul:double/r1"]
        history = await (await client.get("/v1/history", headers=headers)).json()
        assert history["entries"][0]["summary"] == "ratings: consul catalog changed"
