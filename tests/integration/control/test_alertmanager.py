"""A real Alertmanager (Debian ``prometheus-alertmanager``) notifies the control
plane's webhook: a ``rollback`` alert rolls the canary back, a ``scale`` alert
holds a replica floor until it resolves.

The control plane runs in the test's loop on 127.0.0.1 (port from the OS);
Alertmanager is a child process listening on 127.0.0.1:0 (it logs the port it
got), with gossip off, stopped at the end of each test.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}, "v2": {"labels": {"version": "v2"}}}}
ROUTE = {"rules": [{"backends": [{"subset": "v1"}]}]}
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(admin_token=TOKEN, data_dir=tmp_path / "cp", tick=0.05)
    (tmp_path / "cp").mkdir()
    app = build_app(settings, SQLiteStore(tmp_path / "cp" / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        assert (await c.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)).status == 200
        assert (await c.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)).status == 200
        yield c


@pytest.fixture
async def alertmanager(tmp_path: Path, control: TestClient[Any, Any]) -> AsyncIterator[str]:
    """Alertmanager's base URL; its only receiver is the control plane's webhook."""
    config = {
        "route": {
            "receiver": "meshcontrol",
            "group_by": ["alertname", "service"],
            "group_wait": "100ms",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "meshcontrol",
                "webhook_configs": [
                    {
                        "url": str(control.make_url("/v1/alerts")),
                        "send_resolved": True,
                        "http_config": {"authorization": {"credentials": TOKEN}},
                    }
                ],
            }
        ],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            ALERTMANAGER,
            f"--config.file={path}",
            f"--storage.path={tmp_path / 'am-data'}",
            "--web.listen-address=127.0.0.1:0",
            "--cluster.listen-address=",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = None
        for _ in range(200):
            found = LISTENING.search(log_path.read_text())
            if found:
                port = int(found.group(1))
                break
            assert proc.returncode is None, log_path.read_text()
            await asyncio.sleep(0.05)
        assert port is not None, log_path.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def fire(base: str, labels: dict[str, str], *, resolved: bool = False) -> None:
    now = datetime.now(UTC)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": "canary returns 5xx"},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
    }
    if resolved:
        alert["endsAt"] = (now - timedelta(seconds=1)).isoformat()
    async with (
        ClientSession() as session,
        session.post(f"{base}/api/v2/alerts", json=[alert]) as response,
    ):
        assert response.status == 200, await response.text()


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_a_rollback_alert_from_alertmanager_rolls_the_canary_back(
    control: TestClient[Any, Any], alertmanager: str
) -> None:
    body = {"stable": "v1", "canary": "v2", "step_weight": 20, "interval": "1h"}
    assert (await control.put("/v1/rollouts/ratings", json=body, headers=ADMIN)).status == 200
    labels = {"alertname": "CanaryErrors", "meshproxy_action": "rollback", "service": "ratings"}
    await fire(alertmanager, labels)

    async def rolled_back() -> bool:
        view = await (await control.get("/v1/rollouts/ratings", headers=ADMIN)).json()
        return bool(view["phase"] == "rolled_back")

    async def answered() -> bool:
        # Recorded once the webhook call is done, i.e. after the weights were written.
        body = await (await control.get("/v1/decisions?source=alert", headers=ADMIN)).json()
        return bool(body["decisions"])

    await until(rolled_back)
    await until(answered)
    table = await (await control.get("/v1/routes/ratings", headers=ADMIN)).json()
    assert [(b["subset"], b["weight"]) for b in table["rules"][0]["backends"]] == [
        ("v1", 100),
        ("v2", 0),
    ]
    decided = await (await control.get("/v1/decisions?source=alert", headers=ADMIN)).json()
    first = decided["decisions"][0]
    assert first["action"] == "rollback" and first["subject"] == "ratings"
    assert "alert CanaryErrors firing: canary returns 5xx" in first["reason"]
    history = await (await control.get("/v1/history", headers=ADMIN)).json()
    assert "rolled back: alert CanaryErrors firing" in history["entries"][0]["summary"]


async def test_a_scale_alert_holds_a_replica_floor_until_it_resolves(
    control: TestClient[Any, Any], alertmanager: str
) -> None:
    labels = {
        "alertname": "PeakAhead",
        "meshproxy_action": "scale",
        "service": "ratings",
        "min_replicas": "5",
    }
    await fire(alertmanager, labels)

    async def floors() -> dict[str, int]:
        body = await (await control.get("/v1/autoscaler/floors", headers=ADMIN)).json()
        found: dict[str, int] = body["floors"]
        return found

    async def held() -> bool:
        return await floors() == {"ratings": 5}

    await until(held)
    await fire(alertmanager, labels, resolved=True)

    async def released() -> bool:
        return await floors() == {}

    await until(released)
    decided = await (await control.get("/v1/decisions?source=alert", headers=ADMIN)).json()
    assert [d["action"] for d in decided["decisions"]] == ["unfloor", "floor"]
