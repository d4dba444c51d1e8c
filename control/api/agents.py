"""Service specs, nodes and the agents' channel in the API, and the reconcile loop.

* ``PUT|GET|DELETE /v1/services/{service}/spec``: how to run a service and its
  replica bounds and autoscaling target; ``GET`` adds the instances assigned now.
* ``POST /v1/nodes`` registers a node (capacity, labels, zone); ``GET /v1/nodes``.
* ``GET /v1/agent/assignments?node=ID&index=V&wait=30s``: the long-poll of a node
  agent, answered as soon as the node's assignments differ from index ``V``.
* ``POST /v1/agent/status``: the agent's ACK of an index, its heartbeat, and the
  state and load counters of its instances.

A spec's ``env`` may carry secrets: only write tokens see its values (agents hold
one, which is also why the assignments long-poll needs write scope); a read token
sees the names with the values hidden.

The loop (``install_agents``) runs ``Reconciler.step`` every ``tick`` and records
its decisions in the decisions log (``GET /v1/decisions``, sources ``autoscaler``
and ``scheduler``).  Specs are kept in the store and reloaded at start; nodes and
assignments are held in memory: after a restart each agent registers again with
the instances it runs, which are adopted (``NodeBook.adopt``), and scaling waits
``restart_grace`` seconds for the agents to come back.  Handlers only translate HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from control.api import models as m
from control.api.alerts import FLOORS
from control.api.auth import Principal
from control.api.operation import Operation, parse_body, parse_query, reply
from control.api.rollouts import DECISIONS
from control.nodes import (
    AgentReport,
    Assignment,
    InstanceReport,
    NodeBook,
    NodeError,
    NodeRegistration,
    ServiceSpec,
)
from control.reconcile import Reconciler
from control.service import ControlPlane, NotFound, check_name
from control.state import StateError
from meshproxy.config.types import Duration

log = logging.getLogger("meshcontrol.agents")
MAX_WAIT = 300.0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Agents:
    """The node book, the reconciler, and the event long-polls wait on."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.book = reconciler.book
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


AGENTS: web.AppKey[Agents] = web.AppKey("agents", Agents)


class InstanceView(_Body):
    id: str
    node: str | None
    status: InstanceReport | None = Field(description="the agent's last report, if any")


class SpecView(_Body):
    service: str
    spec: ServiceSpec
    instances: list[InstanceView]


class NodeView(_Body):
    registration: NodeRegistration
    down: bool = Field(description="stopped reporting; its instances were released")
    last_seen: float = Field(description="seconds since the last report")
    acked_index: int
    index: int
    cpu_millis_allocated: int
    memory_bytes_allocated: int
    instances: list[InstanceView]


class Refused(_Body):
    id: str
    reason: str


class NodeRegistered(NodeView):
    """The answer to a registration: the node, and what became of the instances
    it said it runs (absent from a control plane that does not adopt)."""

    adopted: list[str] = Field(description="instances kept as this node's assignments")
    refused: list[Refused] = Field(description="instances the agent should stop, and why")


class NodeList(_Body):
    nodes: list[NodeView]


class AssignmentsQuery(_Body):
    node: str = Field(min_length=1, max_length=253)
    index: int | None = Field(default=None, ge=0, description="index last applied")
    wait: Duration = Field(default=30.0, ge=0, le=MAX_WAIT, description="e.g. 30s")


class Assignments(_Body):
    index: int
    instances: list[Assignment]


class Recorded(_Body):
    recorded: bool


def _instances(agents: Agents, assigned: list[Assignment]) -> list[InstanceView]:
    book = agents.book
    return [
        InstanceView(id=a.id, node=book.node_of(a.id), status=book.report_of(a.id))
        for a in assigned
    ]


HIDDEN = "(hidden)"


def _spec_view(agents: Agents, service: str, spec: ServiceSpec, who: Principal) -> SpecView:
    if "write" not in who.scopes:
        spec = spec.model_copy(update={"env": dict.fromkeys(spec.env, HIDDEN)})
    assigned = _instances(agents, agents.book.instances_of(service))
    return SpecView(service=service, spec=spec, instances=assigned)


def _node_error(exc: NodeError, field: str) -> StateError:
    return StateError([(field, str(exc))])


async def put_spec(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    service = request.match_info["service"]
    check_name(service)
    spec = await parse_body(request, ServiceSpec)
    agents = request.app[AGENTS]
    await cp.put_spec(service, spec, who.name)
    agents.reconciler.set_spec(service, spec)
    agents.wake()
    return reply(_spec_view(agents, service, spec, who))


async def get_spec(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    service = request.match_info["service"]
    agents = request.app[AGENTS]
    spec = agents.reconciler.specs.get(service)
    if spec is None:
        raise NotFound(f"no spec for service {service!r}")
    return reply(_spec_view(agents, service, spec, who))


async def delete_spec(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    service = request.match_info["service"]
    agents = request.app[AGENTS]
    await cp.delete_spec(service, who.name)
    agents.reconciler.remove_spec(service)
    agents.wake()
    return reply(Recorded(recorded=True))


async def register_node(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    registration = await parse_body(request, NodeRegistration)
    agents = request.app[AGENTS]
    try:
        record = agents.book.register(registration, cp.monotonic())
    except NodeError as exc:
        raise _node_error(exc, "id") from None
    for instance, why in record.refused.items():
        log.warning("node %s: instance %s not adopted: %s", registration.id, instance, why)
    agents.wake()
    view = _view_of(agents, registration.id, cp)
    refused = [Refused(id=i, reason=why) for i, why in record.refused.items()]
    return reply(NodeRegistered(**dict(view), adopted=record.adopted, refused=refused))


def _view_of(agents: Agents, node: str, cp: ControlPlane) -> NodeView:
    book = agents.book
    record = book.nodes[node]
    index, assigned = book.assignments(node)
    cpu = mem = 0
    if not record.down:
        usage = book.scheduler.usage(node)
        cpu, mem = usage.cpu_millis, usage.memory_bytes
    return NodeView(
        registration=record.registration,
        down=record.down,
        last_seen=max(cp.monotonic() - record.last_seen, 0.0),
        acked_index=record.acked_index,
        index=index,
        cpu_millis_allocated=cpu,
        memory_bytes_allocated=mem,
        instances=_instances(agents, assigned),
    )


async def list_nodes(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    agents = request.app[AGENTS]
    return reply(NodeList(nodes=[_view_of(agents, n, cp) for n in sorted(agents.book.nodes)]))


async def assignments(request: web.Request, cp: ControlPlane, who: Principal) -> web.StreamResponse:
    query = parse_query(request, AssignmentsQuery)
    agents = request.app[AGENTS]
    deadline = cp.monotonic() + query.wait
    while True:
        if cp.closing:
            return reply(m.ErrorBody(error="the control plane is shutting down"), 503)
        changed = agents.changed()
        try:
            index, assigned = agents.book.assignments(query.node)
        except NodeError as exc:
            raise NotFound(str(exc)) from None
        if agents.book.nodes[query.node].down:
            raise NotFound(f"node {query.node} lapsed: register it again")
        if query.index is None or index != query.index:
            return reply(Assignments(index=index, instances=assigned))
        remaining = deadline - cp.monotonic()
        if remaining <= 0:
            return web.Response(status=304)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await changed.wait()


async def agent_status(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    report = await parse_body(request, AgentReport)
    agents = request.app[AGENTS]
    now = cp.monotonic()
    try:
        agents.book.report(report, now)
    except NodeError as exc:
        raise NotFound(str(exc)) from None
    agents.reconciler.observe(report, now)
    return reply(Recorded(recorded=True))


async def reconcile_loop(app: web.Application, cp: ControlPlane, every: float) -> None:
    agents, decisions = app[AGENTS], app[DECISIONS]
    while True:
        try:
            made = agents.reconciler.step(cp.monotonic(), cp.wall(), app[FLOORS].all())
        except Exception:  # one bad step must not stop scaling for good
            log.exception("reconcile step failed")
            made = []
        for decision in made:
            decisions.record(decision)
            log.info(
                "%s %s %s: %s", decision.source, decision.subject, decision.action, decision.reason
            )
        if made:
            agents.wake()
        await asyncio.sleep(every)


def install_agents(
    app: web.Application, cp: ControlPlane, every: float, restart_grace: float = 0.0
) -> Agents:
    """Keep the agents' state in ``app`` and reconcile every ``every`` seconds.
    Call after ``install_rollouts`` and ``install_alerts`` (it uses their log and floors),
    and after the control plane's own start (its stored specs are taken then)."""
    agents = Agents(Reconciler(NodeBook()))
    app[AGENTS] = agents

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        agents.reconciler.restore(cp.specs, cp.monotonic(), restart_grace)
        if cp.specs:
            log.info(
                "%d service specs restored; scaling waits %gs for the agents to register",
                len(cp.specs),
                restart_grace,
            )
        task = asyncio.create_task(reconcile_loop(app, cp, every))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def release(app: web.Application) -> None:
        agents.wake()

    app.on_shutdown.append(release)
    app.cleanup_ctx.append(lifecycle)
    return agents


OPERATIONS: list[Operation] = [
    Operation(
        "PUT",
        "/v1/services/{service}/spec",
        "write",
        "Set how a service runs (command, env, port, resources) and how it scales",
        put_spec,
        body=ServiceSpec,
        response=SpecView,
    ),
    Operation(
        "GET",
        "/v1/services/{service}/spec",
        "read",
        "A service's spec and the instances assigned to nodes",
        get_spec,
        response=SpecView,
        statuses=(404,),
    ),
    Operation(
        "DELETE",
        "/v1/services/{service}/spec",
        "write",
        "Forget a service's spec; its instances are stopped",
        delete_spec,
        response=Recorded,
        statuses=(404,),
    ),
    Operation(
        "POST",
        "/v1/nodes",
        "write",
        "Register a node (capacity, labels, zone); again after an agent restart",
        register_node,
        body=NodeRegistration,
        response=NodeRegistered,
    ),
    Operation(
        "GET",
        "/v1/nodes",
        "read",
        "Nodes, their allocation and instances",
        list_nodes,
        response=NodeList,
    ),
    Operation(
        "GET",
        "/v1/agent/assignments",
        "write",
        "Long-poll of a node agent: the instances its node should run",
        assignments,
        response=Assignments,
        query=AssignmentsQuery,
        statuses=(304, 404, 503),
    ),
    Operation(
        "POST",
        "/v1/agent/status",
        "write",
        "An agent's ACK, heartbeat, and its instances' state and load",
        agent_status,
        body=AgentReport,
        response=Recorded,
        statuses=(404,),
    ),
]
