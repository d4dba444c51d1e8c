"""The watch loop against the control plane in-process (aiohttp test server on
127.0.0.1, a temporary SQLite file), and against scripted doubles for answers
the real one never gives."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore
from meshproxy.config import Bootstrap, ConfigError, Node, Snapshot
from meshproxy.routing import CompiledRoutes
from meshproxy.xds import (
    Backoff,
    SnapshotWatcher,
    first_snapshot,
    load_cache,
    save_cache,
    watcher_for,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}}}
NODE = Node(id="reviews-1", service="reviews", upstreams=["ratings"])
FAST = Backoff(base=0.01, cap=0.05)


class Applied:
    """The runtime as the watcher sees it: records snapshots, may refuse."""

    def __init__(self, refuse: Callable[[Snapshot], str | None] = lambda s: None) -> None:
        self.snapshots: list[Snapshot] = []
        self.refuse = refuse
        self.changed = asyncio.Event()

    def __call__(self, snapshot: Snapshot) -> None:
        why = self.refuse(snapshot)
        if why is not None:
            raise ConfigError([("snapshot.routes.0.rules.0.mirror.subset", why)])
        self.snapshots.append(snapshot)
        self.changed.set()


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[str]:
    settings = ControlSettings(
        admin_token="admin-secret", read_token="read-secret", data_dir=tmp_path, tick=0.05
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _watcher(url: str, apply: Applied, tmp_path: Path | None = None, **kw: Any) -> SnapshotWatcher:
    cache = tmp_path / "cache" / "reviews-1.json" if tmp_path is not None else None
    kw.setdefault("wait", 2.0)
    return SnapshotWatcher(url, NODE, "read-secret", apply, cache, backoff=FAST, **kw)


async def _proxy(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/proxies", headers=READER) as r:
        body = await r.json()
    found: dict[str, Any] = next((p for p in body["proxies"] if p["id"] == "reviews-1"), {})
    return found


async def _until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling another process's view
            await asyncio.sleep(0.02)


async def _put_policy(http: aiohttp.ClientSession, url: str, body: object) -> int:
    async with http.put(f"{url}/v1/policies/ratings", json=body, headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        version: int = (await r.json())["version"]
    return version


async def test_first_snapshot_is_applied_acked_cached_and_puts_config_in_force(
    control: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    written = await _put_policy(http, control, POLICY)
    applied = Applied()
    watcher = _watcher(control, applied, tmp_path)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.in_force.wait(), 5)

        async def acked() -> bool:
            return (await _proxy(http, control)).get("acked_version") == written

        await _until(acked)
    finally:
        await watcher.stop()
    assert [s.version for s in applied.snapshots] == [str(written)]
    assert [p.service for p in applied.snapshots[0].policies] == ["ratings"]
    assert watcher.state.source == "control-plane" and watcher.state.applied == written
    assert watcher.cache_path is not None
    assert load_cache(watcher.cache_path).snapshot == applied.snapshots[0]


async def test_a_write_reaches_a_waiting_watcher_and_is_acked(
    control: str, http: aiohttp.ClientSession
) -> None:
    applied = Applied()
    watcher = _watcher(control, applied, wait=30.0)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.in_force.wait(), 5)

        async def watching() -> bool:
            proxy = await _proxy(http, control)
            return bool(proxy.get("watching")) and proxy.get("acked_version") == 0

        await _until(watching)
        applied.changed.clear()
        written = await _put_policy(http, control, POLICY)
        await asyncio.wait_for(applied.changed.wait(), 5)

        async def acked() -> bool:
            return (await _proxy(http, control)).get("acked_version") == written

        await _until(acked)
    finally:
        await watcher.stop()
    assert [s.version for s in applied.snapshots] == ["0", str(written)]
    assert watcher.state.failures == 0


async def test_a_refused_snapshot_is_nacked_with_its_reason_and_the_old_one_stays(
    control: str, http: aiohttp.ClientSession
) -> None:
    applied = Applied(lambda s: "unknown subset 'v9'" if s.policies else None)
    watcher = _watcher(control, applied)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.in_force.wait(), 5)
        written = await _put_policy(http, control, POLICY)

        async def nacked() -> bool:
            return (await _proxy(http, control)).get("error_version") == written

        await _until(nacked)
        proxy = await _proxy(http, control)
    finally:
        await watcher.stop()
    assert proxy["last_error"] == "snapshot.routes.0.rules.0.mirror.subset: unknown subset 'v9'"
    assert proxy["acked_version"] == 0
    assert watcher.state.applied == 0 and watcher.state.index == written
    assert len(applied.snapshots) == 1


async def test_a_refusal_by_the_sidecar_reaches_proxies_word_for_word(
    control: str, http: aiohttp.ClientSession
) -> None:
    """A snapshot the control plane accepts but this sidecar refuses (here: a
    node that allows no mirroring, checked after the route compiler) shows at
    /v1/proxies as a NACK with the sidecar's own words, and the last good
    version stays acked."""
    refusal = "mirroring is not allowed on this node"

    def compile_routes(snapshot: Snapshot) -> str | None:
        try:
            CompiledRoutes.from_snapshot(snapshot)
        except ConfigError as exc:
            return exc.problems[0][1]
        if any(rule.mirror is not None for table in snapshot.routes for rule in table.rules):
            return refusal
        return None

    applied = Applied(compile_routes)
    watcher = _watcher(control, applied)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.in_force.wait(), 5)
        await _put_policy(http, control, POLICY)
        route = {"rules": [{"backends": [{"subset": "v1"}], "mirror": {"subset": "v1"}}]}
        async with http.put(f"{control}/v1/routes/ratings", json=route, headers=ADMIN) as r:
            assert r.status == 200, await r.text()
            written = (await r.json())["version"]

        async def nacked() -> bool:
            return (await _proxy(http, control)).get("error_version") == written

        await _until(nacked)
        proxy = await _proxy(http, control)
    finally:
        await watcher.stop()
    assert refusal in proxy["last_error"]
    assert proxy["acked_version"] == written - 1


def _scripted(
    answers: list[tuple[int, bytes]],
    acks: list[dict[str, Any]],
    ack_statuses: list[int] | None = None,
) -> web.Application:
    """A control-plane double: answers polls from ``answers`` in turn (then
    holds the poll), records ACK bodies and answers them from ``ack_statuses``
    in turn (then 200)."""

    async def snapshot(request: web.Request) -> web.Response:
        if answers:
            status, body = answers.pop(0)
            return web.Response(status=status, body=body, content_type="application/json")
        await asyncio.sleep(float(request.query["wait"].removesuffix("ms")) / 1000)
        return web.Response(status=304)

    async def ack(request: web.Request) -> web.Response:
        acks.append(await request.json())
        status = ack_statuses.pop(0) if ack_statuses else 200
        return web.json_response({"recorded": status == 200}, status=status)

    app = web.Application()
    app.router.add_get("/v1/snapshot", snapshot)
    app.router.add_post("/v1/ack", ack)
    return app


async def test_an_invalid_snapshot_is_nacked_with_the_field_path_and_not_applied() -> None:
    bad = {"services": {"ratings": {"endpoints": [{"address": "127.0.0.1", "port": 70000}]}}}
    answers = [(200, json.dumps({"version": 5, "nonce": "n5", "snapshot": bad}).encode())]
    acks: list[dict[str, Any]] = []
    applied = Applied()
    async with TestServer(_scripted(answers, acks), host="127.0.0.1") as server:
        watcher = _watcher(f"http://127.0.0.1:{server.port}", applied, wait=0.2)
        watcher.start()
        try:
            await _until(_true_when(lambda: bool(acks)))
        finally:
            await watcher.stop()
    assert acks[0]["node"] == "reviews-1" and acks[0]["version"] == 5 and acks[0]["nonce"] == "n5"
    assert acks[0]["error"].startswith("snapshot.services.ratings.endpoints.0.port: ")
    assert applied.snapshots == [] and not watcher.in_force.is_set()


def _true_when(test: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return test()

    return check


async def test_errors_back_off_then_the_next_good_answer_resets_the_count() -> None:
    good = json.dumps({"version": 1, "nonce": "a", "snapshot": {}}).encode()
    answers = [(503, b"{}"), (500, b"{}"), (200, b"not json"), (200, good)]
    acks: list[dict[str, Any]] = []
    applied = Applied()
    draws: list[int] = []

    def rand() -> float:
        draws.append(1)
        return 1.0

    async with TestServer(_scripted(answers, acks), host="127.0.0.1") as server:
        watcher = _watcher(f"http://127.0.0.1:{server.port}", applied, wait=0.2, rand=rand)
        watcher.start()
        try:
            await asyncio.wait_for(watcher.in_force.wait(), 5)
            await _until(_true_when(lambda: bool(acks)))
        finally:
            await watcher.stop()
    assert len(draws) == 3  # one backoff per failed round
    assert acks == [{"node": "reviews-1", "version": 1, "nonce": "a"}]
    assert watcher.state.failures == 0 and watcher.state.applied == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_control_plane_starts_from_the_cache_and_keeps_trying(
    tmp_path: Path,
) -> None:
    cached = Snapshot.model_validate(
        {"services": {"ratings": {"endpoints": [{"address": "127.0.0.1", "port": 9001}]}}}
    )
    save_cache(tmp_path / "cache" / "reviews-1.json", 8, cached)
    applied = Applied()
    watcher = _watcher(f"http://127.0.0.1:{_closed_port()}", applied, tmp_path)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.in_force.wait(), 5)
        await _until(_true_when(lambda: watcher.state.failures >= 3))
    finally:
        await watcher.stop()
    assert applied.snapshots == [cached]
    assert watcher.state.source == "cache" and watcher.state.index == 8


async def test_without_a_cache_an_unreachable_control_plane_leaves_nothing_in_force(
    tmp_path: Path,
) -> None:
    applied = Applied()
    watcher = _watcher(f"http://127.0.0.1:{_closed_port()}", applied, tmp_path)
    watcher.start()
    try:
        await _until(_true_when(lambda: watcher.state.failures >= 3))
    finally:
        await watcher.stop()
    assert not watcher.in_force.is_set() and applied.snapshots == []
    assert watcher.state.last_error is not None


async def test_a_wrong_token_is_a_failure_that_backs_off(control: str) -> None:
    applied = Applied()
    watcher = SnapshotWatcher(control, NODE, "wrong", applied, backoff=FAST, wait=1.0)
    watcher.start()
    try:
        await _until(_true_when(lambda: watcher.state.failures >= 2))
    finally:
        await watcher.stop()
    assert watcher.state.last_error is not None and "401" in watcher.state.last_error
    assert applied.snapshots == []


def test_static_mode_has_no_watcher_and_workers_watch_as_their_own_proxies(
    tmp_path: Path,
) -> None:
    static = Bootstrap.model_validate({"node": {"id": "r-1", "service": "reviews"}})
    assert watcher_for(static, Applied()) is None
    token = tmp_path / "token"
    token.write_text("from-file\n")
    boot = Bootstrap.model_validate(
        {
            "node": {"id": "r-1", "service": "reviews"},
            "control_plane": {
                "url": "http://127.0.0.1:15010/",
                "token_file": str(token),
                "wait": "5s",
                "cache_dir": str(tmp_path / "c"),
            },
        }
    )
    watcher = watcher_for(boot, Applied(), worker_index="2")
    assert watcher is not None
    assert watcher.node_id == "r-1/w2" and watcher.base == "http://127.0.0.1:15010"
    assert watcher.cache_path == tmp_path / "c" / "r-1.json" and watcher.wait == 5.0
    assert watcher._headers == {"Authorization": "Bearer from-file"}


def test_token_and_token_file_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Bootstrap.model_validate(
            {
                "node": {"id": "r-1", "service": "reviews"},
                "control_plane": {"url": "http://h:1", "token": "a", "token_file": "/t"},
            }
        )


def _delivery(version: int, nonce: str, snapshot: object) -> tuple[int, bytes]:
    return 200, json.dumps({"version": version, "nonce": nonce, "snapshot": snapshot}).encode()


async def test_an_ack_lost_to_a_server_error_is_sent_again_before_the_next_poll() -> None:
    acks: list[dict[str, Any]] = []
    answers = [_delivery(1, "a", {})]
    applied = Applied()
    async with TestServer(_scripted(answers, acks, [503]), host="127.0.0.1") as server:
        watcher = _watcher(f"http://127.0.0.1:{server.port}", applied, wait=0.2)
        watcher.start()
        try:
            await _until(_true_when(lambda: len(acks) >= 2 and watcher.state.pending is None))
        finally:
            await watcher.stop()
    assert acks[0] == acks[1] == {"node": "reviews-1", "version": 1, "nonce": "a"}
    assert len(applied.snapshots) == 1


async def test_an_ack_refused_as_stale_is_dropped_not_repeated() -> None:
    acks: list[dict[str, Any]] = []
    answers = [_delivery(1, "a", {}), _delivery(2, "b", {})]
    applied = Applied()
    async with TestServer(_scripted(answers, acks, [409]), host="127.0.0.1") as server:
        watcher = _watcher(f"http://127.0.0.1:{server.port}", applied, wait=0.2)
        watcher.start()
        try:
            await _until(_true_when(lambda: len(acks) >= 2 and watcher.state.pending is None))
        finally:
            await watcher.stop()
    assert [(a["version"], a["nonce"]) for a in acks] == [(1, "a"), (2, "b")]
    assert watcher.state.failures == 0


async def test_a_fault_inside_apply_is_a_nack_and_the_watch_goes_on() -> None:
    def broken(snapshot: Snapshot) -> None:
        raise RuntimeError("boom")

    acks: list[dict[str, Any]] = []
    answers = [_delivery(1, "a", {}), _delivery(2, "b", {})]
    async with TestServer(_scripted(answers, acks), host="127.0.0.1") as server:
        watcher = SnapshotWatcher(
            f"http://127.0.0.1:{server.port}", NODE, None, broken, backoff=FAST, wait=0.2
        )
        watcher.start()
        try:
            await _until(_true_when(lambda: len(acks) >= 2))
        finally:
            await watcher.stop()
    assert [a["error"] for a in acks] == ["internal error while applying: RuntimeError('boom')"] * 2
    assert not watcher.in_force.is_set()


async def test_a_refused_first_snapshot_falls_back_to_the_cache(tmp_path: Path) -> None:
    cached = Snapshot.model_validate({"services": {"ratings": {}}})
    save_cache(tmp_path / "cache" / "reviews-1.json", 4, cached)
    applied = Applied(lambda s: "refused" if "details" in s.services else None)
    acks: list[dict[str, Any]] = []
    answers = [_delivery(5, "a", {"services": {"details": {}}})]
    async with TestServer(_scripted(answers, acks), host="127.0.0.1") as server:
        watcher = _watcher(f"http://127.0.0.1:{server.port}", applied, tmp_path, wait=0.2)
        watcher.start()
        try:
            await _until(_true_when(lambda: bool(acks)))
        finally:
            await watcher.stop()
    assert acks[0]["error"].endswith("refused")
    assert applied.snapshots == [cached] and watcher.state.source == "cache"
    # the refused version stays the index, so it is not delivered again at once
    assert watcher.state.index == 5 and watcher.state.applied == 4


async def test_an_unreadable_cache_leaves_the_sidecar_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "reviews-1.json"
    path.parent.mkdir()
    path.write_text("{half")
    applied = Applied()
    watcher = _watcher(f"http://127.0.0.1:{_closed_port()}", applied, tmp_path)
    watcher.start()
    try:
        await _until(_true_when(lambda: watcher.state.failures >= 2))
    finally:
        await watcher.stop()
    assert not watcher.in_force.is_set() and applied.snapshots == []


async def test_waiting_for_the_first_snapshot_ends_on_stop() -> None:
    watcher = SnapshotWatcher("http://127.0.0.1:9", NODE, None, Applied())
    stop = asyncio.Event()
    stop.set()
    assert await first_snapshot(watcher, stop) is False
    watcher.in_force.set()
    assert await first_snapshot(watcher, asyncio.Event()) is True
