"""``POST /v1/alerts``, the Alertmanager webhook receiver, and ``GET /v1/autoscaler/floors``.

Point an Alertmanager receiver at it (``webhook_configs: [{url:
http://CONTROL/v1/alerts, http_config: {authorization: {credentials: TOKEN}}}]``,
a write token).  What each alert asks is decided in ``control/alerts.py``; here
the actions are applied (rollbacks through the rollout driver, floors kept in
the app) and every one is recorded in the decisions log with source ``alert``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from control.alerts import ScaleFloors, WebhookPayload, actions_from
from control.api.auth import Principal
from control.api.operation import Operation, parse_body, reply
from control.api.rollouts import DECISIONS, ROLLOUTS
from control.decisions import Decision
from control.service import ControlPlane, NotFound

FLOORS: web.AppKey[ScaleFloors] = web.AppKey("floors", ScaleFloors)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertOutcome(_Body):
    service: str
    action: str = Field(description="rollback | floor | unfloor | ignore")
    result: str


class AlertsHandled(_Body):
    outcomes: list[AlertOutcome]


class Floors(_Body):
    floors: dict[str, int] = Field(description="service -> min replicas held by firing alerts")


async def receive_alerts(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    payload = await parse_body(request, WebhookPayload)
    driver, floors = request.app[ROLLOUTS], request.app[FLOORS]
    outcomes: list[AlertOutcome] = []
    for action in actions_from(payload):
        version: int | None = None
        if action.kind == "rollback":
            try:
                done = await driver.rollback(action.service, action.reason, f"alert:{who.name}")
                result = done.reason
                version = cp.version
            except NotFound as exc:
                result = f"ignored: {exc}"
        elif action.kind in ("floor", "unfloor"):
            floors.apply(action)
            floor = floors.floor(action.service)
            result = f"min replicas floor {floor}" if floor is not None else "no floor"
        else:
            result = f"ignored: {action.reason}"
        outcomes.append(AlertOutcome(service=action.service, action=action.kind, result=result))
        request.app[DECISIONS].record(
            Decision(
                cp.wall(),
                "alert",
                action.service,
                action.kind,
                f"{action.reason} -> {result}",
                who.name,
                version,
            )
        )
    return reply(AlertsHandled(outcomes=outcomes))


async def get_floors(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    return reply(Floors(floors=request.app[FLOORS].all()))


def install_alerts(app: web.Application) -> ScaleFloors:
    floors = ScaleFloors()
    app[FLOORS] = floors
    return floors


OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/v1/alerts",
        "write",
        "Alertmanager webhook (v4): rollback and scale actions from alert labels",
        receive_alerts,
        body=WebhookPayload,
        response=AlertsHandled,
    ),
    Operation(
        "GET",
        "/v1/autoscaler/floors",
        "read",
        "Min-replica floors held by firing scale alerts",
        get_floors,
        response=Floors,
    ),
]
