"""``meshcontrol run`` as a real process on a loopback port chosen by the OS,
with a temporary data directory, driven over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.controlproc import meshcontrol as start_meshcontrol

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer it-admin-token"}
READER = {"Authorization": "Bearer it-read-token"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}, "v2": {"labels": {"version": "v2"}}}}
ROUTE = {"rules": [{"backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}]}


@contextmanager
def meshcontrol(data_dir: Path) -> Iterator[str]:
    """Start the control plane, yield its base URL, stop it; it must exit cleanly."""
    env = {"MESHCONTROL_ADMIN_TOKEN": "it-admin-token", "MESHCONTROL_READ_TOKEN": "it-read-token"}
    with start_meshcontrol(data_dir, env, require_clean_exit=True) as base:
        yield base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session:
        yield session


async def _json(response: aiohttp.ClientResponse) -> Any:
    async with response:
        return await response.json()


class Watcher:
    """A simulated sidecar: long-polls its snapshot and ACKs every one it gets."""

    def __init__(self, base: str, http: aiohttp.ClientSession, node: str) -> None:
        self.base, self.http, self.node = base, http, node
        self.index: int | None = None
        self.acked = asyncio.Event()
        self.target: int | None = None
        self.nack_reason: str | None = None

    async def run(self) -> None:
        while True:
            params = {
                "node": self.node,
                "service": "reviews",
                "upstreams": "ratings",
                "wait": "30s",
            }
            if self.index is not None:
                params["index"] = str(self.index)
            async with self.http.get(
                f"{self.base}/v1/snapshot", params=params, headers=READER
            ) as response:
                if response.status == 304:
                    continue
                assert response.status == 200, await response.text()
                delivery = await response.json()
            ack: dict[str, Any] = {
                "node": self.node,
                "version": delivery["version"],
                "nonce": delivery["nonce"],
            }
            if self.nack_reason is not None:
                ack["error"] = self.nack_reason
            async with self.http.post(f"{self.base}/v1/ack", json=ack, headers=READER) as r:
                assert r.status == 200, await r.text()
            self.index = delivery["version"]
            if self.target is not None and delivery["version"] >= self.target:
                self.acked.set()


async def _proxies(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    body = await _json(await http.get(f"{base}/v1/proxies", headers=READER))
    return {p["id"]: p for p in body["proxies"]}


async def _all_watching(http: aiohttp.ClientSession, base: str, count: int) -> None:
    for _ in range(200):
        proxies = await _proxies(http, base)
        if (
            sum(1 for p in proxies.values() if p["watching"] and p["acked_version"] is not None)
            == count
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"watchers not all waiting: {proxies}")


async def test_one_write_is_acked_by_twenty_watchers_within_a_second(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with meshcontrol(tmp_path) as base:
        watchers = [Watcher(base, http, f"reviews-{i}") for i in range(20)]
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        try:
            await _all_watching(http, base, 20)
            started = time.monotonic()
            written = await _json(
                await http.put(f"{base}/v1/policies/ratings", json=POLICY, headers=ADMIN)
            )
            for w in watchers:
                w.target = written["version"]
                if w.index is not None and w.index >= w.target:
                    w.acked.set()
            await asyncio.wait_for(asyncio.gather(*(w.acked.wait() for w in watchers)), 5)
            elapsed = time.monotonic() - started
            proxies = await _proxies(http, base)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert elapsed < 1.0, f"all 20 ACKs took {elapsed:.3f}s"
    assert {p["acked_version"] for p in proxies.values()} == {written["version"]}
    assert len(proxies) == 20
    print(f"20 watchers acked version {written['version']} in {elapsed * 1000:.0f} ms")


async def test_bad_route_table_is_422_naming_the_field_and_changes_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with meshcontrol(tmp_path) as base:
        await _json(await http.put(f"{base}/v1/policies/ratings", json=POLICY, headers=ADMIN))
        good = await _json(await http.put(f"{base}/v1/routes/ratings", json=ROUTE, headers=ADMIN))
        bad_route = {"rules": [{"backends": [{"subset": "v3"}]}]}
        async with http.put(f"{base}/v1/routes/ratings", json=bad_route, headers=ADMIN) as r:
            assert r.status == 422
            problems = (await r.json())["problems"]
        negative = {"rules": [{"backends": [{"subset": "v1", "weight": -5}]}]}
        async with http.put(f"{base}/v1/routes/ratings", json=negative, headers=ADMIN) as r:
            assert r.status == 422
            weight_problems = (await r.json())["problems"]
        stored = await _json(await http.get(f"{base}/v1/routes/ratings", headers=READER))
        history = await _json(await http.get(f"{base}/v1/history", headers=READER))
    assert problems[0]["field"] == "routes.ratings.rules.0.backends.0.subset"
    assert "v3" in problems[0]["message"]
    assert weight_problems[0]["field"] == "rules.0.backends.0.weight"
    assert [b["subset"] for b in stored["rules"][0]["backends"]] == ["v1", "v2"]
    assert history["version"] == good["version"] == 2


async def test_nack_shows_with_its_reason_at_proxies(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with meshcontrol(tmp_path) as base:
        watcher = Watcher(base, http, "reviews-nack")
        task = asyncio.create_task(watcher.run())
        try:
            await _all_watching(http, base, 1)
            watcher.nack_reason = "routes.0.rules.0: regex does not compile"
            written = await _json(
                await http.put(f"{base}/v1/policies/ratings", json=POLICY, headers=ADMIN)
            )
            watcher.target = written["version"]
            await asyncio.wait_for(watcher.acked.wait(), 5)
            proxy = (await _proxies(http, base))["reviews-nack"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert proxy["last_error"] == "routes.0.rules.0: regex does not compile"
    assert proxy["error_version"] == written["version"]
    assert proxy["acked_version"] == 0
    assert proxy["service"] == "reviews" and proxy["upstreams"] == ["ratings"]


async def test_restarted_control_plane_keeps_every_resource(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    access = {"action": "allow", "rules": [{"from": {"services": ["reviews"]}}]}
    instance = {
        "service": "ratings",
        "address": "127.0.0.1",
        "port": 9001,
        "labels": {"version": "v1"},
        "ttl": "1m",
    }
    with meshcontrol(tmp_path) as base:
        for path, body in [("policies", POLICY), ("routes", ROUTE), ("access", access)]:
            await _json(await http.put(f"{base}/v1/{path}/ratings", json=body, headers=ADMIN))
        registered = await _json(
            await http.post(f"{base}/v1/instances", json=instance, headers=ADMIN)
        )
        before = {
            p: await _json(await http.get(f"{base}/v1/{p}/ratings", headers=READER))
            for p in ("policies", "routes", "access")
        }
        history_before = await _json(await http.get(f"{base}/v1/history", headers=READER))
    with meshcontrol(tmp_path) as base:
        after = {
            p: await _json(await http.get(f"{base}/v1/{p}/ratings", headers=READER))
            for p in ("policies", "routes", "access")
        }
        services = await _json(await http.get(f"{base}/v1/services", headers=READER))
        history_after = await _json(await http.get(f"{base}/v1/history", headers=READER))
        snapshot = await _json(
            await http.get(
                f"{base}/v1/snapshot", params={"node": "r", "service": "reviews"}, headers=READER
            )
        )
    assert after == before
    assert history_after == history_before and history_after["version"] == 4
    assert [i["id"] for i in services["instances"]] == [registered["id"]]
    assert [e["port"] for e in snapshot["snapshot"]["services"]["ratings"]["endpoints"]] == [9001]
