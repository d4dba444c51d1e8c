"""The REST handlers and the table of operations they are registered from.

``OPERATIONS`` is the one list of (method, path, scope, models, handler): the
app registers its routes from it and ``openapi.py`` documents it, so the two
cannot drift.  Handlers only translate HTTP to ``ControlPlane`` calls; the
wrapper in ``app.py`` turns errors into statuses (400 bad JSON, 401/403 auth,
404 unknown, 422 invalid with field paths).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from control.api import agents, alerts, certs, rollouts
from control.api import models as m
from control.api.auth import Principal
from control.api.operation import (
    Operation,
    json_body,
    parse_body,
    parse_query,
    path_int,
    reply,
)
from control.push import NodeInfo, snapshot_json
from control.registry.local import InstanceSpec
from control.service import ControlPlane, check_name
from control.state import KINDS, MODELS, Kind, dump
from meshproxy.config.types import Duration

MAX_WAIT = 300.0


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotQuery(_Query):
    node: str = Field(min_length=1, max_length=253, description="the proxy's id")
    service: str = Field(min_length=1, max_length=253, description="the proxy's own service")
    upstreams: str | None = Field(
        default=None, description="comma-separated services it calls; absent: every service"
    )
    index: int | None = Field(default=None, ge=0, description="version last received")
    wait: Duration = Field(default=30.0, ge=0, le=MAX_WAIT, description="e.g. 30s")


class HistoryQuery(_Query):
    limit: int = Field(default=100, ge=1, le=1000)
    before: int | None = Field(default=None, ge=0)


# -- resources (routes, policies, access) -------------------------------------


def _resource_ops(kind: Kind) -> list[Operation]:
    async def get(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
        return web.json_response(dump(cp.resource(kind, request.match_info["service"])))

    async def put(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
        body = await json_body(request)
        version = await cp.put_resource(kind, request.match_info["service"], body, who.name)
        return reply(m.Written(version=version))

    async def delete(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
        version = await cp.delete_resource(kind, request.match_info["service"], who.name)
        return reply(m.Written(version=version))

    path = f"/v1/{kind}/{{service}}"
    model = MODELS[kind]
    return [
        Operation(
            "GET",
            path,
            "read",
            f"Read the {kind} of a service",
            get,
            response=model,
            statuses=(404,),
        ),
        Operation(
            "PUT",
            path,
            "write",
            f"Create or replace the {kind} of a service",
            put,
            body=model,
            response=m.Written,
        ),
        Operation(
            "DELETE",
            path,
            "write",
            f"Delete the {kind} of a service",
            delete,
            response=m.Written,
            statuses=(404,),
        ),
    ]


# -- registry ------------------------------------------------------------------


async def register(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    spec = await parse_body(request, InstanceSpec)
    instance_id, version = await cp.register(spec, who.name)
    return reply(m.Registered(id=instance_id, version=version), status=201)


async def heartbeat(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    await cp.heartbeat(request.match_info["id"])
    return reply(m.Written(version=cp.version))


async def deregister(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    version = await cp.deregister(request.match_info["id"], who.name)
    return reply(m.Written(version=version))


async def services(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    statuses = cp.registry.statuses()
    names = sorted(cp.registry.services() | cp.state.services())
    views = [
        m.ServiceView(
            name=name,
            instances=sum(1 for s in statuses if s.spec.service == name),
            healthy=sum(1 for s in statuses if s.spec.service == name and s.healthy),
            routes=name in cp.state.routes,
            policy=name in cp.state.policies,
            access=name in cp.state.access,
        )
        for name in names
    ]
    instances = [
        m.InstanceView(
            id=s.id,
            service=s.spec.service,
            address=s.spec.address,
            port=s.spec.port,
            labels=s.spec.labels,
            zone=s.spec.zone,
            healthy=s.healthy,
            liveness=s.liveness,
        )
        for s in statuses
    ]
    return reply(m.ServiceList(version=cp.version, services=views, instances=instances))


# -- push ----------------------------------------------------------------------


async def snapshot(request: web.Request, cp: ControlPlane, who: Principal) -> web.StreamResponse:
    query = parse_query(request, SnapshotQuery)
    check_name(query.service)
    upstreams = None
    if query.upstreams is not None:
        upstreams = tuple(sorted({u.strip() for u in query.upstreams.split(",") if u.strip()}))
    node = NodeInfo(query.node, query.service, upstreams)
    deadline = cp.monotonic() + query.wait
    cp.book.seen(node, cp.wall())
    cp.book.watch(node.id, +1)
    try:
        while True:
            if cp.closing:
                return reply(m.ErrorBody(error="the control plane is shutting down"), 503)
            changed = cp.change_event()
            delivery = cp.book.offer(node, query.index, cp.snapshot_for(node), cp.wall())
            if delivery is not None:
                body = m.SnapshotDelivery(
                    version=delivery.version,
                    nonce=delivery.nonce,
                    snapshot=snapshot_json(delivery.snapshot),
                )
                return reply(body)
            remaining = deadline - cp.monotonic()
            if remaining <= 0:
                return web.Response(status=304)
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass
    finally:
        cp.book.watch(node.id, -1)


async def ack(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    body = await parse_body(request, m.AckRequest)
    result = cp.book.ack(body.node, body.version, body.nonce, body.error, cp.wall())
    if not result.accepted:
        return reply(m.ErrorBody(error=result.reason), status=409)
    return reply(m.Acked(recorded=True))


async def proxies(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    views = [
        m.ProxyView(
            id=r.node.id,
            service=r.node.service,
            upstreams=list(r.node.upstreams) if r.node.upstreams is not None else None,
            sent_version=r.sent_version,
            acked_version=r.acked_version,
            last_error=r.last_error,
            error_version=r.error_version,
            last_seen=r.last_seen,
            watching=r.watching > 0,
        )
        for r in sorted(cp.book.records.values(), key=lambda r: r.node.id)
    ]
    return reply(m.ProxyList(version=cp.version, proxies=views))


# -- history -------------------------------------------------------------------


def _history_view(entry: Any) -> m.HistoryView:
    return m.HistoryView.model_validate(entry, from_attributes=True)


async def history(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    query = parse_query(request, HistoryQuery)
    entries = await cp.history(query.limit, query.before)
    return reply(m.HistoryList(version=cp.version, entries=[_history_view(e) for e in entries]))


async def history_version(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    entry, state = await cp.history_entry(path_int(request, "version"))
    tables = {k: {n: dump(r) for n, r in state.of(k).items()} for k in KINDS}
    return reply(m.VersionState(entry=_history_view(entry), state=tables))


async def rollback(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    body = await parse_body(request, m.RollbackRequest)
    return reply(m.Written(version=await cp.rollback(body.version, who.name)))


async def healthz(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    return reply(m.Health(status="ok", version=cp.version))


OPERATIONS: list[Operation] = [
    *(op for kind in KINDS for op in _resource_ops(kind)),
    Operation(
        "POST",
        "/v1/instances",
        "write",
        "Register an instance (ttl or HTTP check)",
        register,
        body=InstanceSpec,
        response=m.Registered,
    ),
    Operation(
        "PUT",
        "/v1/instances/{id}/heartbeat",
        "write",
        "Renew an instance's TTL",
        heartbeat,
        response=m.Written,
        statuses=(404,),
    ),
    Operation(
        "DELETE",
        "/v1/instances/{id}",
        "write",
        "Deregister an instance",
        deregister,
        response=m.Written,
        statuses=(404,),
    ),
    Operation(
        "GET",
        "/v1/services",
        "read",
        "Services and their instances",
        services,
        response=m.ServiceList,
    ),
    Operation(
        "GET",
        "/v1/proxies",
        "read",
        "Proxies: versions sent, acked, refused",
        proxies,
        response=m.ProxyList,
    ),
    Operation(
        "GET",
        "/v1/history",
        "read",
        "Change history, newest first",
        history,
        response=m.HistoryList,
        query=HistoryQuery,
    ),
    Operation(
        "GET",
        "/v1/history/{version}",
        "read",
        "One version and its desired state",
        history_version,
        response=m.VersionState,
        statuses=(404,),
    ),
    Operation(
        "POST",
        "/v1/rollback",
        "write",
        "Restore the desired state of a version",
        rollback,
        body=m.RollbackRequest,
        response=m.Written,
        statuses=(404,),
    ),
    Operation(
        "GET",
        "/v1/snapshot",
        "read",
        "Long-poll a proxy's scoped snapshot",
        snapshot,
        response=m.SnapshotDelivery,
        query=SnapshotQuery,
        statuses=(304, 503),
    ),
    Operation(
        "POST",
        "/v1/ack",
        "read",
        "ACK (or NACK, with error) a snapshot",
        ack,
        body=m.AckRequest,
        response=m.Acked,
        statuses=(409,),
    ),
    Operation("GET", "/healthz", "none", "Liveness", healthz, response=m.Health),
    Operation(
        "POST",
        "/v1/certificates",
        "none",  # a bootstrap token, checked by the handler against what it may claim
        "Sign a sidecar's CSR into its SPIFFE certificate (bootstrap token)",
        certs.issue_certificate,
        body=certs.CertificateRequest,
        response=certs.CertificateIssued,
        statuses=(400, 401, 403, 422),
    ),
    Operation(
        "GET",
        "/v1/trust-bundle",
        "none",
        "The roots a sidecar must trust now",
        certs.trust_bundle,
        response=certs.TrustBundle,
    ),
    Operation(
        "POST",
        "/v1/ca/rotate",
        "write",
        "Start a root rotation (the new root signs after the publish delay)",
        certs.rotate_root,
        response=certs.RotationStarted,
        statuses=(409,),
    ),
    *rollouts.OPERATIONS,
    *alerts.OPERATIONS,
    *agents.OPERATIONS,
]
