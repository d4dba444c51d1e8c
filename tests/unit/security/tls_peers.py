"""Loopback peers for the TLS tests: an echo application behind an
``InboundListener`` and a client that makes one request per connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from meshproxy.config.security import TLSMode
from meshproxy.security.contexts import TLSContexts
from meshproxy.security.handshake import InboundListener, connect_mtls
from meshproxy.security.refusals import Refusals
from meshproxy.security.spiffe import SpiffeId

TRUST_DOMAIN = "cluster.local"


class Echo(asyncio.Protocol):
    """Answers each line with ``<peer URI or -> <serial> <line>``."""

    def __init__(self, peer: SpiffeId | None, serial: Callable[[], str]) -> None:
        self.peer = peer
        self.serial = serial
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        # The certificate this connection was served with, not the current one.
        self.served = self.serial() if ssl_object is not None else "plain"

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            who = self.peer.uri if self.peer else "-"
            self.transport.write(f"{who} {self.served} ".encode() + line + b"\n")


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.buffer = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.lines.put_nowait(line)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    async def ask(self, text: str) -> str:
        assert self.transport is not None
        self.transport.write(text.encode() + b"\n")
        async with asyncio.timeout(5.0):
            return (await self.lines.get()).decode()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_echo(
    contexts: TLSContexts,
    mode: TLSMode = "strict",
    refusals: Refusals | None = None,
    handshake_timeout: float = 5.0,
) -> InboundListener:
    listener = InboundListener(
        contexts,
        lambda: mode,
        lambda peer: Echo(peer, lambda: contexts.material.info.serial),
        refusals or Refusals(),
        TRUST_DOMAIN,
        handshake_timeout,
    )
    await listener.start("127.0.0.1", 0)
    return listener


async def dial(
    port: int, contexts: TLSContexts, expected: SpiffeId, refusals: Refusals | None = None
) -> Client:
    _, client = await connect_mtls(
        Client, "127.0.0.1", port, contexts, expected, refusals or Refusals()
    )
    assert isinstance(client, Client)
    return client


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a counter the code under test bumps) for up to 5 s."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not become true within 5 s")


class Load:
    """Steady load: ``workers`` loops, each making one request per new mTLS
    connection (taking the client contexts current at that moment)."""

    def __init__(self, port: int, client: Callable[[], TLSContexts], expected: SpiffeId) -> None:
        self.port = port
        self.client = client
        self.expected = expected
        self.ok = 0
        self.failures: list[str] = []
        self.served: set[str] = set()
        self.stopping = False

    async def _worker(self, n: int) -> None:
        i = 0
        while not self.stopping:
            i += 1
            try:
                conn = await dial(self.port, self.client(), self.expected)
                try:
                    answer = await conn.ask(f"w{n}-{i}")
                finally:
                    conn.close()
                if not answer.endswith(f" w{n}-{i}"):
                    raise AssertionError(f"wrong answer {answer!r}")
                self.served.add(answer.split(" ")[1])
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0)

    async def run(self, workers: int = 2) -> None:
        await asyncio.gather(*(self._worker(n) for n in range(workers)))

    async def reach(self, more: int) -> None:
        """Wait until ``more`` further requests succeeded."""
        target = self.ok + more
        await wait_for(lambda: self.ok >= target or bool(self.failures))
