"""Forwarding over recording transports (no sockets): a retried 5xx never
reaches the client and the retry goes to another endpoint; breaker overflow
answers at once; the observer gets one filled exchange per request."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from meshproxy.config import parse_bootstrap
from meshproxy.http1 import HttpServer, ListenerContext, NullMetrics
from meshproxy.http1.upstream import UpstreamConnection
from meshproxy.observe.exchange import Exchange
from meshproxy.resolve import Resolver
from tests.unit.http1.test_http1_exchange import Recorder

BOOT = parse_bootstrap(
    """
node: {id: n1, service: me}
listeners: [{name: out, port: 0}]
snapshot:
  services:
    web: {endpoints: [{address: 127.0.0.1, port: 9001}, {address: 127.0.0.1, port: 9002}]}
    tiny: {endpoints: [{address: 127.0.0.1, port: 9003}]}
  policies:
    - {service: tiny, circuit_breakers: {max_requests: 1}}
  routes:
    - service: web
      rules: [{retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms}}}]
"""
)
GET = b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FAILED = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"


class Observed:
    def __init__(self) -> None:
        self.done: list[Exchange] = []

    def exchange_started(
        self, exchange: Exchange, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        return []

    def exchange_done(self, exchange: Exchange) -> None:
        self.done.append(exchange)


class Pool:
    """One parked upstream connection per endpoint port, handed out on demand."""

    def __init__(self) -> None:
        self.by_port: dict[int, UpstreamConnection] = {}

    def take(self, key: Hashable) -> UpstreamConnection | None:
        assert isinstance(key, tuple)
        return self.by_port.get(key[1])

    def put(self, key: Hashable, conn: UpstreamConnection) -> bool:
        return True

    def discard(self, key: Hashable, conn: UpstreamConnection) -> None:
        pass

    def take_all(self) -> list[UpstreamConnection]:
        return []


def wired(ports: tuple[int, ...]) -> tuple[ListenerContext, Observed, dict[int, Recorder]]:
    observed = Observed()
    ctx = ListenerContext(
        asyncio.get_running_loop(),
        BOOT.listeners[0],
        Resolver(BOOT.snapshot, BOOT.listeners, "me"),
        NullMetrics(),
        observer=observed,
        source_service="me",
    )
    pool = Pool()
    ctx.pool = pool  # type: ignore[assignment]
    wires = {}
    for port in ports:
        up = UpstreamConnection(ctx, ("127.0.0.1", port))
        wires[port] = Recorder()
        up.connection_made(wires[port])  # type: ignore[arg-type]
        pool.by_port[port] = up
    return ctx, observed, wires


def client(ctx: ListenerContext) -> tuple[HttpServer, Recorder]:
    server = HttpServer(ctx)
    down = Recorder()
    server.connection_made(down)  # type: ignore[arg-type]
    return server, down


async def test_a_retried_5xx_is_not_relayed_and_the_retry_goes_elsewhere() -> None:
    ctx, observed, wires = wired((9001, 9002))
    server, down = client(ctx)
    server.data_received(GET % b"web")
    first = next(port for port, wire in wires.items() if wire.data)
    other = 9002 if first == 9001 else 9001
    ctx.pool.by_port[first].data_received(FAILED)  # type: ignore[attr-defined]
    assert down.take() == b""
    for _ in range(100):  # the backoff is at most a few milliseconds
        if wires[other].data:
            break
        await asyncio.sleep(0.005)
    assert wires[other].take().startswith(b"GET /x HTTP/1.1\r\n")
    ctx.pool.by_port[other].data_received(OK)  # type: ignore[attr-defined]
    assert down.take() == OK
    [ex] = observed.done
    assert (ex.status, ex.flags, ex.destination_service, ex.route) == (
        200,
        "-",
        "web",
        "routes.0.rules.0",
    )
    assert ex.upstream_host == f"127.0.0.1:{other}"
    assert ex.bytes_out == 2
    failed = ctx.resolver.upstreams.cluster("web")
    assert failed is not None
    errors = {e.port: e.errors for e in failed.endpoints}
    assert errors == {first: 1, other: 0}


async def test_breaker_overflow_answers_503_at_once_with_its_flag() -> None:
    ctx, observed, _wires = wired((9003,))
    busy, _ = client(ctx)
    busy.data_received(GET % b"tiny")  # in flight: holds the one request slot
    refused, down = client(ctx)
    refused.data_received(GET % b"tiny")
    answer = down.take()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b"upstream overflow: max_requests (1) reached\n")
    [ex] = observed.done
    assert (ex.status, ex.flags, ex.destination_service) == (503, "UO", "tiny")


async def test_an_unknown_service_is_a_404_with_the_no_route_flag() -> None:
    ctx, observed, _wires = wired(())
    _server, down = client(ctx)
    _server.data_received(GET % b"nowhere")
    assert down.take().startswith(b"HTTP/1.1 404 Not Found\r\n")
    [ex] = observed.done
    assert (ex.status, ex.flags, ex.destination_service) == (404, "NR", "unknown")
