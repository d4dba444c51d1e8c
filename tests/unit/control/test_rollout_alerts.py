"""What alerts ask for (pure), replica floors, and the webhook in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.alerts import ScaleFloors, WebhookPayload, actions_from, with_floor
from control.app import build_app
from control.autoscaler import AutoscalerConfig
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "receiver": "meshcontrol",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "alerts": list(alerts),
    }


def alert(status: str = "firing", fingerprint: str = "f1", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": labels, "annotations": {}, "fingerprint": fingerprint}


def test_only_alerts_with_an_action_label_act() -> None:
    body = WebhookPayload.model_validate(
        payload(
            alert(alertname="HighCPU", service="ratings"),
            alert(alertname="Bad", meshproxy_action="rollback", service="ratings"),
            alert("resolved", alertname="Bad", meshproxy_action="rollback", service="reviews"),
        )
    )
    actions = actions_from(body)
    assert [(a.kind, a.service) for a in actions] == [("rollback", "ratings")]
    assert actions[0].reason == "alert Bad firing"


def test_scale_alerts_set_and_release_floors_and_the_highest_holds() -> None:
    floors = ScaleFloors()
    fire5 = alert(fingerprint="a", meshproxy_action="scale", service="r", min_replicas="5")
    fire8 = alert(fingerprint="b", meshproxy_action="scale", service="r", min_replicas="8")
    for action in actions_from(WebhookPayload.model_validate(payload(fire5, fire8))):
        floors.apply(action)
    assert floors.all() == {"r": 8}
    gone8 = alert("resolved", fingerprint="b", meshproxy_action="scale", service="r")
    (unfloor,) = actions_from(WebhookPayload.model_validate(payload(gone8)))
    assert unfloor.kind == "unfloor" and floors.apply(unfloor)
    assert floors.floor("r") == 5
    gone5 = alert("resolved", fingerprint="a", meshproxy_action="scale", service="r")
    floors.apply(actions_from(WebhookPayload.model_validate(payload(gone5)))[0])
    assert floors.all() == {} and floors.floor("r") is None


def test_malformed_action_labels_are_ignored_with_the_reason() -> None:
    body = WebhookPayload.model_validate(
        payload(
            alert(meshproxy_action="scale", service="r", min_replicas="many"),
            alert(meshproxy_action="reboot", service="r"),
            alert(meshproxy_action="rollback"),
        )
    )
    reasons = [(a.kind, a.reason) for a in actions_from(body)]
    assert reasons == [
        ("ignore", "alert unnamed firing: min_replicas 'many' is not 0-10000"),
        ("ignore", "alert unnamed firing: unknown action 'reboot'"),
        ("ignore", "alert unnamed firing: no service label"),
    ]


def test_a_floor_raises_min_replicas_but_never_past_max() -> None:
    config = AutoscalerConfig(target=10, min_replicas=2, max_replicas=6)
    assert with_floor(config, None) is config
    assert with_floor(config, 1) is config
    assert with_floor(config, 4).min_replicas == 4
    assert with_floor(config, 50).min_replicas == 6


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(
        admin_token="admin-secret", read_token="read-secret", data_dir=tmp_path, tick=0.05
    )
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_the_webhook_needs_a_write_token_and_a_v4_payload(
    client: TestClient[Any, Any],
) -> None:
    body = payload(alert(meshproxy_action="rollback", service="ratings"))
    assert (await client.post("/v1/alerts", json=body)).status == 401
    assert (await client.post("/v1/alerts", json=body, headers=READER)).status == 403
    old = dict(body, version="3")
    refused = await client.post("/v1/alerts", json=old, headers=ADMIN)
    assert refused.status == 422
    assert (await refused.json())["problems"][0]["field"] == "version"


async def test_a_rollback_alert_without_a_rollout_is_recorded_as_ignored(
    client: TestClient[Any, Any],
) -> None:
    body = payload(alert(alertname="Bad", meshproxy_action="rollback", service="ratings"))
    response = await client.post("/v1/alerts", json=body, headers=ADMIN)
    assert response.status == 200
    (outcome,) = (await response.json())["outcomes"]
    assert outcome["action"] == "rollback"
    assert outcome["result"] == "ignored: no rollout of service 'ratings'"
    decided = await (await client.get("/v1/decisions", headers=READER)).json()
    assert decided["decisions"][0]["source"] == "alert"
    assert "ignored" in decided["decisions"][0]["reason"]
