"""Nodes and what runs on them: registrations, assignments, agent reports.

A node agent registers its node (capacity, labels, zone), then long-polls its
*assignments*: the instances the control plane wants on that node, each with
the service spec to run.  The agent reports back what it runs (``report``),
which doubles as its heartbeat and carries the load counters the autoscaler
reads.  ``NodeBook`` keeps that bookkeeping and the placement state (the
``Scheduler``), and bumps a per-node index whenever a node's assignments
change, which is what a long-poll waits on.

Sans-IO: every method takes ``now``; no sockets, no processes.  Deciding *how
many* instances run is ``control/reconcile.py``'s job, deciding *where* is the
scheduler's; this room only records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from control.scheduler import (
    ZONE_LABEL,
    Decision,
    NodeSpec,
    PodSpec,
    Scheduler,
    SchedulingError,
    parse_cpu,
    parse_memory,
)
from meshproxy.config.types import parse_duration

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


def _seconds(value: object) -> object:
    # A number is seconds (what the API answers), so an answer can be put back as is.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return parse_duration(value)


# Seconds in, "6s" or 6 accepted; answered as a number of seconds.
Seconds = Annotated[
    float,
    BeforeValidator(_seconds),
    PlainSerializer(float, return_type=float),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}], "description": "e.g. 6s"}),
]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NodeError(ValueError):
    """An unknown node or instance, or a report that does not fit the book."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cpu(text: str) -> str:
    try:
        parse_cpu(text)
    except SchedulingError as exc:
        raise ValueError(str(exc)) from None
    return text


def _memory(text: str) -> str:
    try:
        parse_memory(text)
    except SchedulingError as exc:
        raise ValueError(str(exc)) from None
    return text


class Autoscaling(_Model):
    """The autoscaler's knobs for one service (``control/autoscaler.py``)."""

    metric: Literal["concurrency", "rps"] = "concurrency"
    target: float = Field(default=10.0, gt=0, description="per instance")
    stable_window: Seconds = Field(default=60.0, ge=6.0, le=3600.0)
    panic_window_percentage: float = Field(default=10.0, ge=1.0, le=100.0)
    scale_down_stabilization: Seconds = Field(default=300.0, ge=0.0, le=3600.0)


class ServiceSpec(_Model):
    """How to run a service's instances, and how many (``PUT /v1/services/{name}/spec``)."""

    command: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1, max_length=256)
    env: dict[str, Annotated[str, Field(max_length=65536)]] = {}
    port_env: str = Field(default="PORT", description="env var that carries the allocated port")
    cpu: str = Field(default="100m", description="CPU request and limit, e.g. 250m")
    memory: str = Field(default="128Mi", description="memory request and limit, e.g. 256Mi")
    cpu_seconds: int | None = Field(
        default=None, ge=1, description="RLIMIT_CPU budget, on nodes without cgroups v2"
    )
    labels: dict[str, str] = {}
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    autoscaling: Autoscaling = Autoscaling()

    _check_cpu = field_validator("cpu")(_cpu)
    _check_memory = field_validator("memory")(_memory)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return env

    @field_validator("port_env")
    @classmethod
    def _port_env(cls, name: str) -> str:
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name

    @model_validator(mode="after")
    def _bounds(self) -> ServiceSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    @property
    def cpu_millis(self) -> int:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


class Assignment(_Model):
    """One instance a node should run: pushed to the agent as it is."""

    id: str
    service: str
    spec: ServiceSpec


class NodeRegistration(_Model):
    """``POST /v1/nodes``: what an agent says about its node, and what it already runs."""

    id: Name
    cpu: str = Field(description="allocatable CPU, e.g. 2000m")
    memory: str = Field(description="allocatable memory, e.g. 2Gi")
    zone: str | None = Field(default=None, max_length=63)
    labels: dict[str, str] = {}
    address: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    max_instances: int = Field(default=110, ge=1, le=10000)
    instances: list[Assignment] = Field(
        default=[],
        max_length=10000,
        description="the instances the agent runs now (after a control-plane restart): "
        "adopted as this node's assignments, so they keep running",
    )

    _check_cpu = field_validator("cpu")(_cpu)
    _check_memory = field_validator("memory")(_memory)

    def node(self) -> NodeRegistration:
        """The node itself, without the instances it carried."""
        return self.model_copy(update={"instances": []}) if self.instances else self

    def node_spec(self) -> NodeSpec:
        labels = dict(self.labels)
        if self.zone is not None:
            labels[ZONE_LABEL] = self.zone
        return NodeSpec(
            self.id, parse_cpu(self.cpu), parse_memory(self.memory), self.max_instances, labels
        )


InstanceState = Literal["starting", "running", "backoff", "stopping", "failed"]


class InstanceReport(_Model):
    """What an agent says about one instance it runs."""

    id: str
    state: InstanceState
    port: int | None = Field(default=None, description="the instance's sidecar inbound port")
    app_port: int | None = None
    registered_as: str | None = Field(default=None, description="registry instance id")
    limits: str = Field(default="", description="how resource limits are enforced")
    restarts: int = Field(default=0, ge=0)
    message: str = ""
    requests: float = Field(default=0.0, ge=0, description="inbound requests, cumulative")
    busy_seconds: float = Field(
        default=0.0, ge=0, description="sum of inbound request durations, cumulative"
    )


class AgentReport(_Model):
    """``POST /v1/agent/status``: the ACK of an assignments index, a heartbeat and the
    state and load counters of every instance the agent runs."""

    node: Name
    index: int = Field(ge=0, description="the assignments index the agent has applied")
    instances: list[InstanceReport] = []


@dataclass
class NodeRecord:
    registration: NodeRegistration
    registered: float
    last_seen: float
    acked_index: int = 0
    reports: dict[str, InstanceReport] = field(default_factory=dict)
    down: bool = False
    # What became of the instances the latest registration carried.
    adopted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


class NodeBook:
    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.scheduler = scheduler or Scheduler()
        self.nodes: dict[str, NodeRecord] = {}
        self._assigned: dict[str, dict[str, Assignment]] = {}
        self._where: dict[str, str] = {}  # instance id -> node
        self._index = 0
        self._node_index: dict[str, int] = {}

    # -- nodes -----------------------------------------------------------------------

    def register(self, registration: NodeRegistration, now: float) -> NodeRecord:
        """A new node, or an agent that restarted: its assignments are kept, so it
        starts them again.  A changed capacity replaces the node's spec if it is empty.

        The instances the registration carries (an agent that outlived a control-plane
        restart) are adopted as the node's assignments before this answers, so the
        long-poll that follows lists them and the agent keeps them running; see
        ``adopt``.  ``record.adopted`` and ``record.refused`` say what became of them."""
        node = registration.node()
        record = self.nodes.get(node.id)
        if record is None or record.registration != node or record.down:
            record = self._enter(node, record, now)
        record.last_seen = now
        record.adopted, record.refused = self.adopt(node.id, registration.instances)
        return record

    def _enter(self, node: NodeRegistration, record: NodeRecord | None, now: float) -> NodeRecord:
        if record is not None:
            if self._assigned.get(node.id) and node != record.registration:
                raise NodeError(
                    f"node {node.id} runs instances: drain it before changing its capacity"
                )
            if not record.down:
                self.scheduler.remove_node(node.id)
        self.scheduler.add_node(node.node_spec())
        record = NodeRecord(node, now, now)
        self.nodes[node.id] = record
        self._assigned.setdefault(node.id, {})
        self._bump(node.id)
        return record

    def adopt(self, node: str, running: list[Assignment]) -> tuple[list[str], dict[str, str]]:
        """Take instances a node already runs as its assignments: (adopted, refused
        with why).  One assigned here already stays as it is; one assigned to another
        node is refused (that node's copy is the control plane's).  Whether the
        service still has a spec is the reconciler's question: it removes orphans."""
        self._record(node)
        adopted: list[str] = []
        refused: dict[str, str] = {}
        fresh = False
        for assignment in running:
            where = self._where.get(assignment.id)
            if assignment.id in adopted or assignment.id in refused:
                refused[assignment.id] = "listed twice"
            elif where == node:
                adopted.append(assignment.id)
            elif where is not None:
                refused[assignment.id] = f"assigned to node {where}"
            else:
                # It runs already: the allocation is recorded, not filtered (an
                # instance that no longer fits is a matter for the reconciler).
                self.scheduler.bind(self._pod(assignment), node)
                self._assigned[node][assignment.id] = assignment
                self._where[assignment.id] = node
                adopted.append(assignment.id)
                fresh = True
        if fresh:
            self._bump(node)
        return adopted, refused

    def report(self, report: AgentReport, now: float) -> NodeRecord:
        record = self._record(report.node)
        if record.down:
            raise NodeError(f"node {report.node} lapsed: register it again")
        record.last_seen = now
        record.acked_index = min(report.index, self._node_index.get(report.node, 0))
        mine = self._assigned.get(report.node, {})
        record.reports = {r.id: r for r in report.instances if r.id in mine}
        return record

    def lapse(self, now: float, ttl: float) -> list[str]:
        """Mark nodes not heard from within ``ttl`` as down and release what they ran;
        answers the instances released (the reconciler replaces them elsewhere)."""
        released: list[str] = []
        for name, record in self.nodes.items():
            if record.down or now - record.last_seen <= ttl:
                continue
            for instance in list(self._assigned.get(name, {})):
                self.unassign(instance)
                released.append(instance)
            self.scheduler.remove_node(name)
            record.down = True
            record.reports = {}
        return released

    # -- assignments -----------------------------------------------------------------

    def place(self, assignment: Assignment) -> Decision:
        """Ask the scheduler for a node; on success the instance is assigned there."""
        decision = self.scheduler.schedule(self._pod(assignment))
        if decision.node is not None:
            self._assigned[decision.node][assignment.id] = assignment
            self._where[assignment.id] = decision.node
            self._bump(decision.node)
        return decision

    def unassign(self, instance: str) -> str:
        """Take an instance off its node and free its allocation; answers the node."""
        node = self._where.pop(instance, None)
        if node is None:
            raise NodeError(f"no instance {instance!r} is assigned")
        del self._assigned[node][instance]
        self.nodes[node].reports.pop(instance, None)
        self.scheduler.release(instance)
        self._bump(node)
        return node

    def assignments(self, node: str) -> tuple[int, list[Assignment]]:
        """The node's index and its assignments, oldest first."""
        self._record(node)
        return self._node_index.get(node, 0), list(self._assigned.get(node, {}).values())

    def instances_of(self, service: str) -> list[Assignment]:
        """Every assigned instance of ``service``, oldest first."""
        found = [a for per in self._assigned.values() for a in per.values() if a.service == service]
        return sorted(found, key=lambda a: self._order(a.id))

    def node_of(self, instance: str) -> str | None:
        return self._where.get(instance)

    def report_of(self, instance: str) -> InstanceReport | None:
        node = self._where.get(instance)
        return None if node is None else self.nodes[node].reports.get(instance)

    # -- internals -------------------------------------------------------------------

    def _record(self, node: str) -> NodeRecord:
        record = self.nodes.get(node)
        if record is None:
            raise NodeError(f"no node {node!r}: register it first")
        return record

    @staticmethod
    def _pod(assignment: Assignment) -> PodSpec:
        spec = assignment.spec
        return PodSpec(
            assignment.id,
            spec.cpu_millis,
            spec.memory_bytes,
            labels={"service": assignment.service, **spec.labels},
            group=assignment.service,
        )

    def _bump(self, node: str) -> None:
        self._index += 1
        self._node_index[node] = self._index

    def _order(self, instance: str) -> tuple[int, str]:
        # Instance ids end in a sequence number (see Reconciler.new_id).
        head, _, tail = instance.rpartition("-")
        return (int(tail), head) if tail.isdigit() else (0, instance)
