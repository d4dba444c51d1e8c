"""The I/O half of active health checking: HTTP GET probes, one loop per worker.

``HealthProbes.run`` is a single task for the whole worker (never one per
endpoint): it asks every ``HealthChecker`` of the current ``Upstreams``
which probes are due, starts each as a small protocol (``ProbeRequest``, a
connection opened with ``create_connection``: no task per probe), and sleeps
until the earliest ``next_deadline`` or until woken (a probe answered, or
the snapshot changed).  A probe is ``GET path HTTP/1.1`` with ``Host`` set to
the service name and ``Connection: close``; its result is the status of the
response head, or None for a refused connection, a reset or a timeout.

As in Envoy, where a health check uses its cluster's transport socket, a probe
to a service whose policy turns mesh TLS on goes over the same mTLS as the
service's traffic (``security.handshake.open_to``): the endpoint's sidecar must
present the service's SPIFFE ID, else the probe fails (and the refusal is
counted).  The checker's ``host`` is its service's name.

The state machine (when to probe, what results mean) is ``health``'s; this
room only does the I/O and passes ``now``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshproxy import fastpath as fp
from meshproxy.security.handshake import open_to
from meshproxy.upstream.health import HealthChecker, Probe
from meshproxy.upstream.upstreams import Upstreams

if TYPE_CHECKING:
    from meshproxy.security.mesh import MeshTLS

# Sleep at most this long between passes, so a deadline computed before a
# snapshot swap never keeps the loop asleep for long.
MAX_SLEEP = 1.0


class ProbeRequest(asyncio.Protocol):
    """One probe on its own connection; reports once through ``done``."""

    __slots__ = ("buf", "done", "transport")

    def __init__(self, request: bytes, done: Callable[[int | None], None]) -> None:
        self.buf = bytearray(request)  # the request until sent, then the answer
        self.done: Callable[[int | None], None] | None = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(bytes(self.buf))
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            got = fp.parse_response_head(self.buf, 0, b"GET")
        except fp.ParseError:
            self.finish(None)
            return
        if got is not None:
            head, end = got
            if head.status < 200:
                del self.buf[:end]
                return
            self.finish(head.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(None)

    def finish(self, status: int | None) -> None:
        done = self.done
        self.done = None
        if self.transport is not None:
            self.transport.close()
        if done is not None:
            done(status)


class HealthProbes:
    """Runs the health checks of whatever ``upstreams()`` returns now, over
    ``mtls`` (None: security off) to the services it turns TLS on for."""

    def __init__(
        self,
        upstreams: Callable[[], Upstreams],
        loop: asyncio.AbstractEventLoop,
        mtls: MeshTLS | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._loop = loop
        self._mtls = mtls
        self._wake = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()
        self._connecting: set[asyncio.Future[tuple[asyncio.Transport, ProbeRequest]]] = set()
        self._open: set[ProbeRequest] = set()
        self.started = 0  # probes started, for tests and the curious

    def wake(self) -> None:
        """Look at the checkers again now (a snapshot was swapped in)."""
        self._wake.set()

    async def run(self) -> None:
        loop = self._loop
        try:
            while True:
                now = loop.time()
                deadline = math.inf
                for checker in self._upstreams().health_checkers():
                    for probe in checker.due(now):
                        self.start(checker, probe)
                    deadline = min(deadline, checker.next_deadline)
                self._wake.clear()
                sleep = min(max(deadline - loop.time(), 0.0), MAX_SLEEP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep)
        finally:
            self.close()

    def start(self, checker: HealthChecker, probe: Probe) -> None:
        loop = self._loop
        endpoint = probe.endpoint
        request = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshproxy-health\r\n"
            b"Connection: close\r\n\r\n" % (probe.path.encode(), probe.host.encode())
        )
        reported = False

        def report(status: int | None) -> None:
            nonlocal reported
            if reported:
                return
            reported = True
            timer.cancel()
            self._timers.discard(timer)
            self._open.discard(protocol)
            checker.on_probe_result(probe, status, loop.time())
            self._wake.set()

        protocol = ProbeRequest(request, report)
        self._open.add(protocol)
        future = asyncio.ensure_future(
            open_to(
                checker.host,
                self._mtls,
                lambda: protocol,
                endpoint.address,
                endpoint.port,
                probe.timeout,
            )
        )
        self._connecting.add(future)

        def connected(fut: asyncio.Future[tuple[asyncio.Transport, ProbeRequest]]) -> None:
            self._connecting.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                report(None)

        def timed_out() -> None:
            future.cancel()
            protocol.finish(None)
            report(None)

        future.add_done_callback(connected)
        timer = loop.call_later(probe.timeout, timed_out)
        self._timers.add(timer)
        self.started += 1

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for future in self._connecting:
            future.cancel()
        self._connecting.clear()
        for protocol in list(self._open):
            protocol.done = None
            protocol.finish(None)
        self._open.clear()
