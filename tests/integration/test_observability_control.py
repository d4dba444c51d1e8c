"""The control plane's /metrics: version, proxies by long-poll state, refusing proxies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(
        admin_token="admin-secret", read_token="read-secret", data_dir=tmp_path, tick=0.05
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, tuple[str, ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }


async def test_metrics_follow_version_proxies_and_nacks(client: TestClient[Any, Any]) -> None:
    before = await scrape(client)
    assert before[("meshcontrol_config_version", ())] == 0
    assert before[("meshcontrol_proxies", ("idle",))] == 0

    policy = {"subsets": {"v1": {"labels": {"version": "v1"}}}}
    assert (await client.put("/v1/policies/ratings", json=policy, headers=ADMIN)).status == 200
    polled = await client.get("/v1/snapshot?node=a&service=b&wait=1s", headers=READER)
    sent = await polled.json()
    nack = {"node": "a", "version": sent["version"], "nonce": sent["nonce"], "error": "bad field"}
    assert (await client.post("/v1/ack", json=nack, headers=READER)).status == 200

    after = await scrape(client)
    assert after[("meshcontrol_config_version", ())] == 1
    assert after[("meshcontrol_proxies", ("idle",))] == 1
    assert after[("meshcontrol_proxies", ("watching",))] == 0
    assert after[("meshcontrol_proxies_refusing", ())] == 1
