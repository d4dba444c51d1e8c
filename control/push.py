"""Per-proxy snapshots and their delivery bookkeeping (DESIGN section 4).

Sans-IO: ``build_snapshot`` scopes the mesh to what one proxy needs, and
``PushBook`` keeps, per proxy, what was sent (version, nonce, digest), what was
acknowledged or refused, when it was last seen and whether it is waiting on a
long-poll.  The aiohttp handler is a loop around ``PushBook.offer``.

How a sidecar talks to the control plane (node info travels as query
parameters on every poll, so no registration call is needed and a restarted
control plane learns its proxies again from their next poll):

    GET /v1/snapshot?node=ID&service=NAME&upstreams=a,b&index=V&wait=30s

* ``upstreams`` absent means every service; ``upstreams=`` (empty) means none.
* ``index`` is the version of the last snapshot the sidecar *received*, whether
  it accepted it or not, so that a refused snapshot is not sent again at once.
* The answer is 200 ``{version, nonce, snapshot}`` as soon as the proxy's
  scoped snapshot differs from what it has, or 304 when ``wait`` ends first.
* Then ``POST /v1/ack {node, version, nonce, error?}``; an ``error`` is a NACK.

A version is the global store version at which the proxy's view last changed;
proxies not affected by a change are not woken, so two proxies may hold
different versions while both are in sync.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from control.state import DesiredState, dump
from meshproxy.config.policy import Endpoint, Service
from meshproxy.config.snapshot import Snapshot


@dataclass(frozen=True)
class NodeInfo:
    id: str
    service: str
    upstreams: tuple[str, ...] | None  # None: every service


def visible_services(node: NodeInfo, state: DesiredState, all_services: Iterable[str]) -> set[str]:
    """The services whose outbound config ``node`` needs: its own, its declared
    upstreams, and whatever their route tables send traffic to (a backend or
    a mirror may name another service), followed transitively."""
    wanted = set(all_services) if node.upstreams is None else set(node.upstreams)
    wanted.add(node.service)
    pending = list(wanted)
    while pending:
        table = state.routes.get(pending.pop())
        if table is None:
            continue
        for rule in table.rules:
            named = [b.service for b in rule.backends]
            if rule.mirror is not None:
                named.append(rule.mirror.service)
            for service in named:
                if service is not None and service not in wanted:
                    wanted.add(service)
                    pending.append(service)
    return wanted


def build_snapshot(
    node: NodeInfo,
    state: DesiredState,
    endpoints: Mapping[str, list[Endpoint]],
    version: int,
) -> Snapshot:
    """The snapshot for one proxy: endpoints, routes and policies of the
    services it may call, and access policies for its own service only
    (access is enforced inbound, on the callee's side)."""
    names = visible_services(node, state, set(endpoints) | state.services())
    return Snapshot(
        version=str(version),
        services={n: Service(endpoints=list(endpoints.get(n, []))) for n in sorted(names)},
        routes=[state.routes[n] for n in sorted(names) if n in state.routes],
        policies=[state.policies[n] for n in sorted(names) if n in state.policies],
        access=[state.access[node.service]] if node.service in state.access else [],
    )


def full_snapshot(state: DesiredState, endpoints: Mapping[str, list[Endpoint]]) -> Snapshot:
    """Everything at once: what the whole-state check validates."""
    names = sorted(set(endpoints) | state.services())
    return Snapshot(
        services={n: Service(endpoints=list(endpoints.get(n, []))) for n in names},
        routes=[state.routes[n] for n in sorted(state.routes)],
        policies=[state.policies[n] for n in sorted(state.policies)],
        access=[state.access[n] for n in sorted(state.access)],
    )


def digest(snapshot: Snapshot) -> str:
    """Identity of a snapshot's content, its version label left out."""
    body = {k: v for k, v in snapshot_json(snapshot).items() if k != "version"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def snapshot_json(snapshot: Snapshot) -> dict[str, object]:
    return {
        "version": snapshot.version,
        "services": {
            n: {"endpoints": [dump(e) for e in s.endpoints]} for n, s in snapshot.services.items()
        },
        "routes": [dump(r) for r in snapshot.routes],
        "policies": [dump(p) for p in snapshot.policies],
        "access": [dump(a) for a in snapshot.access],
    }


@dataclass(frozen=True)
class Delivery:
    version: int
    nonce: str
    snapshot: Snapshot


@dataclass
class ProxyRecord:
    node: NodeInfo
    last_seen: float
    sent_version: int | None = None
    sent_nonce: str | None = None
    sent_digest: str | None = None
    acked_version: int | None = None
    last_error: str | None = None
    error_version: int | None = None
    watching: int = 0  # long-polls currently open


@dataclass(frozen=True)
class AckResult:
    accepted: bool
    reason: str = ""


@dataclass
class PushBook:
    new_nonce: Callable[[], str]
    records: dict[str, ProxyRecord] = field(default_factory=dict)

    def seen(self, node: NodeInfo, now: float) -> ProxyRecord:
        record = self.records.get(node.id)
        if record is None:
            record = self.records[node.id] = ProxyRecord(node, now)
        record.node = node
        record.last_seen = now
        return record

    def offer(
        self, node: NodeInfo, index: int | None, current: Snapshot, now: float
    ) -> Delivery | None:
        """What to answer a poll from ``node`` holding ``index`` while the mesh
        is ``current`` (already scoped for it): a delivery, or None to wait.

        The proxy is up to date when it holds what was last sent to it and
        that still has the content of ``current``.  A proxy unknown to this
        book (fresh, or the control plane restarted) gets a delivery at once.
        """
        record = self.seen(node, now)
        content = digest(current)
        if index is not None and index == record.sent_version and content == record.sent_digest:
            return None
        if record.sent_digest == content and record.sent_version is not None:
            # Same content re-sent (the proxy lost it, or restarted): keep its version.
            version = record.sent_version
        else:
            version = int(current.version or 0)
        nonce = self.new_nonce()
        record.sent_version, record.sent_nonce, record.sent_digest = version, nonce, content
        return Delivery(version, nonce, current.model_copy(update={"version": str(version)}))

    def ack(
        self, node_id: str, version: int, nonce: str, error: str | None, now: float
    ) -> AckResult:
        record = self.records.get(node_id)
        if record is None:
            return AckResult(False, "unknown node: poll /v1/snapshot first")
        record.last_seen = now
        if nonce != record.sent_nonce or version != record.sent_version:
            return AckResult(False, "stale nonce or version: it is not the last snapshot sent")
        if error:
            record.last_error = error
            record.error_version = version
        else:
            record.acked_version = version
            record.last_error = None
            record.error_version = None
        return AckResult(True)

    def watch(self, node_id: str, delta: int) -> None:
        record = self.records.get(node_id)
        if record is not None:
            record.watching = max(0, record.watching + delta)
