"""A new snapshot swaps the policy chains between requests, in a sidecar
runtime run in the test's loop: the next request meets the new policy, a
snapshot whose filter cannot be built is refused whole and the old chain
stays, and the replaced chain is closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from meshproxy.config import ConfigError, Snapshot, parse_bootstrap
from meshproxy.observe.metrics import ProxyMetrics
from meshproxy.policy import RequestContext
from meshproxy.runtime import Runtime
from meshproxy.settings import Settings
from tests.integration.client import Conn, get
from tests.integration.origin import Origin

pytestmark = pytest.mark.integration


def bootstrap(origin: Origin, access: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "node": {"id": "ratings-1", "service": "ratings"},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "outbound", "direction": "outbound", "address": "127.0.0.1", "port": 0},
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "local_app": f"127.0.0.1:{origin.port}",
            },
        ],
        "snapshot": {"access": access},
    }


HERE = "tests.integration.test_policy_sidecar_swap"
CLOSED: list[str] = []


class Tagged:
    """A user filter that says when its chain is closed."""

    def on_request(self, ctx: RequestContext) -> None:
        ctx.add_response_header(b"x-tagged", b"1")

    async def aclose(self) -> None:
        CLOSED.append("tagged")


class Unbuildable:
    def __init__(self) -> None:
        raise RuntimeError("cannot reach its backend")

    def on_request(self, ctx: RequestContext) -> None:
        pass


DENY_ADMIN = [{"service": "ratings", "action": "deny", "rules": [{"to": {"paths": ["/admin"]}}]}]
DENY_ALL = [{"service": "ratings", "action": "allow", "rules": []}]


async def status_of(port: int, path: str) -> int:
    conn = await Conn.open(port)
    try:
        return (await conn.request(get(path, host="ratings"))).status
    finally:
        await conn.close()


async def test_a_new_snapshot_swaps_the_chain_and_a_bad_one_keeps_the_old(
    origin: Origin,
) -> None:
    boot = parse_bootstrap(yaml.safe_dump(bootstrap(origin, DENY_ADMIN)), "swap")
    rt = Runtime(boot, Settings(), ProxyMetrics())
    await rt.bind({})
    try:
        inbound, outbound = rt.contexts[1], rt.contexts[0]
        assert outbound.policy is None  # no user filter: the outbound path skips the chain
        first = inbound.policy
        assert first is not None
        port = rt.bound["inbound"]
        async with asyncio.timeout(10):
            assert [await status_of(port, p) for p in ("/", "/admin")] == [200, 403]
            rt.apply_snapshot(Snapshot.model_validate({"access": DENY_ALL}))
            assert inbound.policy is not first
            assert [await status_of(port, p) for p in ("/", "/admin")] == [403, 403]
            bad = {"filters": [{"path": f"{HERE}:Unbuildable"}], "access": DENY_ADMIN}
            with pytest.raises(ConfigError, match=r"snapshot\.filters\.0"):
                rt.apply_snapshot(Snapshot.model_validate(bad))
            assert await status_of(port, "/") == 403  # the refused snapshot changed nothing
            tagged = {"filters": [{"path": f"{HERE}:Tagged", "direction": "inbound"}]}
            rt.apply_snapshot(Snapshot.model_validate(tagged))
            assert inbound.policy is not None
            assert inbound.policy.chain.names == [f"{HERE}:Tagged"]
            assert await status_of(port, "/admin") == 200
            rt.apply_snapshot(Snapshot.model_validate({}))
            assert inbound.policy is None
            await asyncio.sleep(0.05)
            assert CLOSED == ["tagged"]  # the replaced chain was closed
    finally:
        await rt.drain()
