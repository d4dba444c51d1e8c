"""Where a request goes: (listener, request head, client) -> a target or a local reply.

This is the seam between the protocol code (``http1``, ``tcp``) and the
routing / load-balancing rooms.  It is built from a snapshot and replaced
whole when the snapshot changes; the protocols only call ``resolve`` and
``resolve_tcp``.  For now: outbound picks the service named by the Host (or
the absolute-form authority), exact name or the label before the first dot;
inbound goes to the listener's ``local_app``; endpoints by round robin.

It must not do I/O or keep per-connection state.
"""

from __future__ import annotations

from meshproxy import fastpath as fp
from meshproxy.config import Listener, Snapshot
from meshproxy.config.types import parse_host_port


class Target:
    """One endpoint chosen for one request.  Instances are built once per
    snapshot and shared: ``key`` names the endpoint's connection pool."""

    __slots__ = ("host", "key", "port", "service", "timeout")

    def __init__(self, service: str, host: str, port: int, timeout: float | None = None) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.key = (host, port)
        self.timeout = timeout  # per-request response timeout; None: the listener's

    def __repr__(self) -> str:
        return f"Target({self.service!r}, {self.host!r}, {self.port})"


class LocalReply:
    """Answer the client directly with ``status`` and a short ``reason``."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"LocalReply({self.status}, {self.reason!r})"


UNKNOWN_SERVICE = LocalReply(404, "unknown service")
NO_HOST = LocalReply(400, "missing host")
NO_ENDPOINTS = LocalReply(503, "no endpoints")


class _RoundRobin:
    __slots__ = ("_next", "targets")

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self._next = 0

    def pick(self) -> Target | LocalReply:
        targets = self.targets
        if not targets:
            return NO_ENDPOINTS
        i = self._next
        if i >= len(targets):
            i = 0
        self._next = i + 1
        return targets[i]


class Resolver:
    __slots__ = ("_by_host", "_local", "_services")

    def __init__(self, snapshot: Snapshot, listeners: list[Listener], local_service: str) -> None:
        self._services: dict[str, _RoundRobin] = {
            name: _RoundRobin([Target(name, ep.address, ep.port) for ep in svc.endpoints])
            for name, svc in snapshot.services.items()
        }
        self._by_host: dict[bytes, _RoundRobin] = {
            name.lower().encode(): rr for name, rr in self._services.items()
        }
        self._local: dict[str, _RoundRobin] = {}
        for listener in listeners:
            if listener.local_app:
                host, port = parse_host_port(listener.local_app)
                self._local[listener.name] = _RoundRobin([Target(local_service, host, port)])

    def resolve(
        self,
        listener: str,
        head: fp.RequestHead,
        authority: bytes | None,
        client: tuple[str, int],
    ) -> Target | LocalReply:
        """``authority``: the absolute-form authority, else the Host value."""
        local = self._local.get(listener)
        if local is not None:
            return local.pick()
        if not authority:
            return NO_HOST
        rr = self._service_for(authority)
        if rr is None:
            return UNKNOWN_SERVICE
        return rr.pick()

    def resolve_tcp(self, service: str) -> Target | LocalReply:
        rr = self._services.get(service)
        if rr is None:
            return UNKNOWN_SERVICE
        return rr.pick()

    def _service_for(self, authority: bytes) -> _RoundRobin | None:
        by_host = self._by_host
        rr = by_host.get(authority)
        if rr is not None:
            return rr
        host = authority.lower()
        if host[:1] == b"[":
            return None
        host = host.partition(b":")[0]
        rr = by_host.get(host)
        if rr is None:
            rr = by_host.get(host.partition(b".")[0])
        return rr

    def service_names(self) -> list[str]:
        return sorted(self._services)
