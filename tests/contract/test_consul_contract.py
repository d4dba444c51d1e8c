"""What meshcontrol relies on in Consul's HTTP API, asserted against the double
in ``tests/consul_double.py`` always, and against a real agent as well when
``CONSUL_HTTP_ADDR`` is set (``CONSUL_HTTP_TOKEN`` too, if its ACLs need one).

Against a real agent every test works under a key prefix and service ids of
its own and removes them at the end; waits are a second or two.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from control.store.consul import ConsulAddress
from tests.consul_double import ConsulDouble

TARGETS = ["double"] + (["real"] if os.environ.get("CONSUL_HTTP_ADDR") else [])


@dataclass
class Agent:
    url: str
    session: aiohttp.ClientSession
    prefix: str  # a KV prefix and service-name stem no other test uses

    async def get(self, path: str, **params: str) -> aiohttp.ClientResponse:
        response = await self.session.get(self.url + path, params=params)
        await response.read()
        return response

    async def put(self, path: str, data: bytes | str = b"", **params: str) -> object:
        async with self.session.put(self.url + path, data=data, params=params) as response:
            assert response.status == 200, await response.text()
            return await response.json(content_type=None)

    async def delete(self, path: str, **params: str) -> object:
        async with self.session.delete(self.url + path, params=params) as response:
            assert response.status == 200, await response.text()
            return await response.json(content_type=None)


@pytest.fixture(params=TARGETS)
async def agent(request: pytest.FixtureRequest) -> AsyncIterator[Agent]:
    double = None
    if request.param == "double":
        double = ConsulDouble()
        await double.start()
        address = ConsulAddress.parse(double.url)
    else:
        address = ConsulAddress.from_env()
    headers = {"X-Consul-Token": address.token} if address.token else {}
    url = f"{address.scheme}://{address.host}:{address.port}"
    if ":" in address.host:
        url = f"{address.scheme}://[{address.host}]:{address.port}"
    prefix = f"meshproxy-contract-{uuid.uuid4().hex[:10]}"
    async with aiohttp.ClientSession(headers=headers) as session:
        found = Agent(url, session, prefix)
        try:
            yield found
        finally:
            async with session.delete(f"{url}/v1/kv/{prefix}", params={"recurse": ""}):
                pass
            if double is not None:
                await double.stop()


def _index(response: aiohttp.ClientResponse) -> int:
    return int(response.headers["X-Consul-Index"])


async def test_kv_value_is_base64_with_create_and_modify_indices(agent: Agent) -> None:
    key = f"{agent.prefix}/a"
    assert await agent.put(f"/v1/kv/{key}", b"one") is True
    first = await agent.get(f"/v1/kv/{key}")
    [item] = await first.json()
    assert base64.b64decode(item["Value"]) == b"one"
    assert item["Key"] == key and item["CreateIndex"] == item["ModifyIndex"]
    assert _index(first) >= item["ModifyIndex"] > 0
    await agent.put(f"/v1/kv/{key}", b"two")
    [again] = await (await agent.get(f"/v1/kv/{key}")).json()
    assert again["CreateIndex"] == item["CreateIndex"]
    assert again["ModifyIndex"] > item["ModifyIndex"]


async def test_an_absent_key_is_404_and_still_carries_an_index(agent: Agent) -> None:
    response = await agent.get(f"/v1/kv/{agent.prefix}/nothing")
    assert response.status == 404
    assert _index(response) > 0


async def test_cas_zero_creates_only_when_absent(agent: Agent) -> None:
    key = f"{agent.prefix}/once"
    assert await agent.put(f"/v1/kv/{key}", b"first", cas="0") is True
    assert await agent.put(f"/v1/kv/{key}", b"second", cas="0") is False
    [item] = await (await agent.get(f"/v1/kv/{key}")).json()
    assert base64.b64decode(item["Value"]) == b"first"


async def test_cas_on_a_stale_modify_index_is_refused(agent: Agent) -> None:
    key = f"{agent.prefix}/head"
    await agent.put(f"/v1/kv/{key}", b"v1")
    [item] = await (await agent.get(f"/v1/kv/{key}")).json()
    stale = str(item["ModifyIndex"])
    assert await agent.put(f"/v1/kv/{key}", b"v2", cas=stale) is True
    assert await agent.put(f"/v1/kv/{key}", b"v3", cas=stale) is False
    [now] = await (await agent.get(f"/v1/kv/{key}")).json()
    assert base64.b64decode(now["Value"]) == b"v2"
    assert await agent.delete(f"/v1/kv/{key}", cas=stale) is False
    assert await agent.delete(f"/v1/kv/{key}", cas=str(now["ModifyIndex"])) is True
    assert (await agent.get(f"/v1/kv/{key}")).status == 404


async def test_recurse_and_keys_list_a_prefix_in_order(agent: Agent) -> None:
    for name in ("b", "a", "c/d"):
        await agent.put(f"/v1/kv/{agent.prefix}/list/{name}", name)
    await agent.put(f"/v1/kv/{agent.prefix}/other", b"x")
    keys = await (await agent.get(f"/v1/kv/{agent.prefix}/list/", keys="")).json()
    assert keys == [f"{agent.prefix}/list/{n}" for n in ("a", "b", "c/d")]
    items = await (await agent.get(f"/v1/kv/{agent.prefix}/list/", recurse="")).json()
    assert [base64.b64decode(i["Value"]) for i in items] == [b"a", b"b", b"c/d"]


async def test_a_blocking_kv_read_returns_when_the_key_changes(agent: Agent) -> None:
    key = f"{agent.prefix}/watched"
    await agent.put(f"/v1/kv/{key}", b"before")
    index = _index(await agent.get(f"/v1/kv/{key}"))

    async def write_later() -> None:
        await asyncio.sleep(0.2)
        await agent.put(f"/v1/kv/{key}", b"after")

    writer = asyncio.create_task(write_later())
    async with asyncio.timeout(10):
        response = await agent.get(f"/v1/kv/{key}", index=str(index), wait="8s")
    await writer
    [item] = await response.json()
    assert base64.b64decode(item["Value"]) == b"after"
    assert _index(response) > index


async def test_a_blocking_read_with_no_change_ends_at_wait_with_the_same_index(
    agent: Agent,
) -> None:
    key = f"{agent.prefix}/quiet"
    await agent.put(f"/v1/kv/{key}", b"x")
    index = _index(await agent.get(f"/v1/kv/{key}"))
    async with asyncio.timeout(10):
        response = await agent.get(f"/v1/kv/{key}", index=str(index), wait="1s")
    assert response.status == 200
    assert _index(response) == index


async def _register(agent: Agent, service_id: str, name: str, port: int) -> None:
    body = {
        "ID": service_id,
        "Name": name,
        "Address": "127.0.0.1",
        "Port": port,
        "Meta": {"version": "v1"},
        "Check": {"TTL": "30s"},
    }
    await agent.put("/v1/agent/service/register", data=json.dumps(body))


async def test_a_ttl_checked_instance_is_passing_only_after_a_pass(agent: Agent) -> None:
    name = f"{agent.prefix}-svc"
    service_id = f"{name}-1"
    await _register(agent, service_id, name, 9001)
    try:
        everything = await (await agent.get(f"/v1/health/service/{name}")).json()
        assert [e["Service"]["ID"] for e in everything] == [service_id]
        assert everything[0]["Service"]["Port"] == 9001
        assert everything[0]["Service"]["Meta"] == {"version": "v1"}
        mine = [c for c in everything[0]["Checks"] if c["ServiceID"] == service_id]
        assert [c["Status"] for c in mine] == ["critical"]
        passing = await agent.get(f"/v1/health/service/{name}", passing="")
        assert await passing.json() == []
        await agent.put(f"/v1/agent/check/pass/service:{service_id}")
        passing = await agent.get(f"/v1/health/service/{name}", passing="")
        assert [e["Service"]["ID"] for e in await passing.json()] == [service_id]
    finally:
        await agent.put(f"/v1/agent/service/deregister/{service_id}")
    assert await (await agent.get(f"/v1/health/service/{name}")).json() == []


async def test_a_blocking_health_query_wakes_on_a_check_change(agent: Agent) -> None:
    name = f"{agent.prefix}-svc"
    service_id = f"{name}-1"
    await _register(agent, service_id, name, 9002)
    try:
        first = await agent.get(f"/v1/health/service/{name}", passing="")
        index = _index(first)

        async def pass_later() -> None:
            await asyncio.sleep(0.2)
            await agent.put(f"/v1/agent/check/pass/service:{service_id}")

        passer = asyncio.create_task(pass_later())
        async with asyncio.timeout(10):
            woken = await agent.get(
                f"/v1/health/service/{name}", passing="", index=str(index), wait="8s"
            )
        await passer
        assert _index(woken) > index
        assert [e["Service"]["ID"] for e in await woken.json()] == [service_id]
        services = await (await agent.get("/v1/catalog/services")).json()
        assert name in services
    finally:
        await agent.put(f"/v1/agent/service/deregister/{service_id}")


async def test_the_leader_is_an_address(agent: Agent) -> None:
    response = await agent.get("/v1/status/leader")
    leader = await response.json()
    assert isinstance(leader, str) and ":" in leader
