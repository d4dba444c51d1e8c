"""Rollouts and decisions in the API: ``PUT|GET|DELETE /v1/rollouts/{service}``,
``GET /v1/rollouts``, ``GET /v1/decisions``.

``PUT`` starts a canary rollout (the first weight is written before the answer);
``DELETE`` rolls a rollout in progress back and forgets it.  The driver that
moves the weights runs beside the app (``install_rollouts``).  Handlers only
translate HTTP; the deciding is in ``control/rollout.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control.api import models as m
from control.api.auth import Principal
from control.api.operation import Operation, json_body, parse_query, reply
from control.decisions import Decision, DecisionLog
from control.rollout import Rollout, RolloutSpec
from control.rollout_driver import RolloutDriver
from control.service import ControlPlane, check_name
from control.state import StateError, pydantic_problems

ROLLOUTS: web.AppKey[RolloutDriver] = web.AppKey("rollouts", RolloutDriver)
DECISIONS: web.AppKey[DecisionLog] = web.AppKey("decisions", DecisionLog)
SESSION: web.AppKey[ClientSession] = web.AppKey("rollout_session", ClientSession)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecisionView(_Body):
    time: float = Field(description="unix time")
    source: str = Field(description="rollout | alert")
    subject: str = Field(description="the service")
    action: str
    reason: str
    actor: str
    version: int | None = Field(description="the config version written, if any")


class DecisionList(_Body):
    decisions: list[DecisionView]


class DecisionQuery(_Body):
    limit: int = Field(default=100, ge=1, le=2000)
    source: str | None = None
    service: str | None = None


class RolloutView(_Body):
    spec: RolloutSpec
    phase: str = Field(description="pending | progressing | promoted | rolled_back")
    canary_weight: int
    failed_checks: int
    spent: float = Field(description="failed canary requests so far")
    reason: str = Field(description="why the weight is what it is")
    decisions: list[DecisionView] = Field(description="this rollout's decisions, newest first")


class RolloutList(_Body):
    rollouts: list[RolloutView]


def _decision(d: Decision) -> DecisionView:
    return DecisionView.model_validate(d, from_attributes=True)


def _view(rollout: Rollout, log: DecisionLog) -> RolloutView:
    mine = log.newest(50, source="rollout", subject=rollout.spec.service)
    return RolloutView(
        spec=rollout.spec,
        phase=str(rollout.phase),
        canary_weight=rollout.canary_weight,
        failed_checks=rollout.failed_checks,
        spent=rollout.spent,
        reason=rollout.reason,
        decisions=[_decision(d) for d in mine],
    )


async def put_rollout(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    service = request.match_info["service"]
    check_name(service)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise StateError([("(body)", "expected a JSON object")])
    given = body.setdefault("service", service)
    if given != service:
        raise StateError([("service", f"the body names {given!r} but the path names {service!r}")])
    try:
        spec = RolloutSpec.model_validate(body)
    except ValidationError as exc:
        raise StateError(pydantic_problems(exc)) from None
    driver = request.app[ROLLOUTS]
    rollout = await driver.start(spec, who.name, request.app[SESSION])
    return reply(_view(rollout, driver.decisions))


async def get_rollout(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    driver = request.app[ROLLOUTS]
    return reply(_view(driver.get(request.match_info["service"]), driver.decisions))


async def list_rollouts(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    driver = request.app[ROLLOUTS]
    return reply(RolloutList(rollouts=[_view(r, driver.decisions) for r in driver.all()]))


async def delete_rollout(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    driver = request.app[ROLLOUTS]
    await driver.remove(request.match_info["service"], who.name)
    return reply(m.Written(version=cp.version))


async def decisions(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    query = parse_query(request, DecisionQuery)
    found = request.app[DECISIONS].newest(query.limit, query.source, query.service)
    return reply(DecisionList(decisions=[_decision(d) for d in found]))


def install_rollouts(app: web.Application, cp: ControlPlane, every: float) -> RolloutDriver:
    """Keep a driver in ``app`` and run it every ``every`` seconds while the app
    runs.  Call after the control plane's own lifecycle is appended, so the
    driver starts after the state is loaded and stops before the store closes."""
    log = DecisionLog()
    driver = RolloutDriver(cp, log)
    app[ROLLOUTS] = driver
    app[DECISIONS] = log

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        driver.restore(cp.rollouts)
        async with ClientSession() as session:
            app[SESSION] = session
            task = asyncio.create_task(driver.run(every, session))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(lifecycle)
    return driver


OPERATIONS: list[Operation] = [
    Operation(
        "PUT",
        "/v1/rollouts/{service}",
        "write",
        "Start a canary rollout of a service (writes the first weight)",
        put_rollout,
        body=RolloutSpec,
        response=RolloutView,
    ),
    Operation(
        "GET",
        "/v1/rollouts/{service}",
        "read",
        "A rollout: phase, weight, checks failed, budget spent, its decisions",
        get_rollout,
        response=RolloutView,
        statuses=(404,),
    ),
    Operation(
        "DELETE",
        "/v1/rollouts/{service}",
        "write",
        "Stop a rollout: roll it back if in progress, then forget it",
        delete_rollout,
        response=m.Written,
        statuses=(404,),
    ),
    Operation("GET", "/v1/rollouts", "read", "Every rollout", list_rollouts, response=RolloutList),
    Operation(
        "GET",
        "/v1/decisions",
        "read",
        "Decisions taken by the control plane (rollouts, alerts), newest first",
        decisions,
        response=DecisionList,
        query=DecisionQuery,
    ),
]
