"""A scriptable HTTP/1.1 origin for the proxy tests, in the test's event loop.

It parses just enough HTTP (Content-Length and chunked request bodies) to
answer by path, and records what it saw: every accepted connection and every
request head, so tests can assert reuse, ordering and that nothing smuggled
reached it.

Paths: ``/`` hello; ``/echo`` the body back; ``/head`` the request head back;
``/chunked?n=K`` K chunks; ``/big?n=BYTES`` a large body; ``/slow?ms=M`` wait
first; ``/close`` answer then close; ``/until-close`` a body ended by closing;
``/continue`` answer 100 Continue before reading the body; ``/hop`` hop-by-hop
fields in the answer; ``/reset`` an RST instead of an answer; ``/sink`` read a
body slowly (``?rate=BYTES_PER_50MS``) and answer its length; ``/healthz``
answers ``health_status``.  Set ``status_override`` to answer every other
path with that status, ``delay`` to wait that long before every answer, and
``tag`` to name the origin in an ``X-Origin`` response field.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes = b""


@dataclass
class Origin:
    server: asyncio.base_events.Server | None = None
    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    idle_close_after: float | None = None  # close a connection idle that long
    keep_alive_header: str | None = None  # e.g. "timeout=1"
    version: str = "HTTP/1.1"
    # Per connection: after this many answers, read the next head and close
    # without answering (the race of a keep-alive connection closing).
    drop_after: int | None = None
    status_override: int | None = None
    delay: float = 0.0
    health_status: int = 200
    tag: str | None = None
    answered: int = 0  # answers written, health checks excluded
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        answered = 0
        try:
            while True:
                try:
                    if self.idle_close_after is not None:
                        async with asyncio.timeout(self.idle_close_after):
                            raw = await reader.readuntil(b"\r\n\r\n")
                    else:
                        raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                if self.drop_after is not None and answered >= self.drop_after:
                    self.requests.append(Seen("DROPPED", "", {}, raw))
                    return
                if not await self._answer(raw, reader, writer):
                    return
                answered += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _answer(
        self, raw: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        seen = Seen(method, url.path, headers, raw)
        self.requests.append(seen)
        path = url.path
        if path == "/continue" and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if path == "/early-hints":
            writer.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
                b"Connection: x-hint\r\nX-Hint: private\r\n\r\n"
            )
        if path == "/sink":
            total = await self._sink(reader, headers, int(query.get("rate", "65536")))
            self._send(writer, 200, str(total).encode())
            return True
        seen.body = await self._read_body(reader, headers)
        if path == "/healthz":
            self.requests.pop()  # probes are not traffic
            self._send(writer, self.health_status, b"health")
            await writer.drain()
            return True
        if self.delay:
            await asyncio.sleep(self.delay)
        self.answered += 1
        if self.status_override is not None:
            self._send(writer, self.status_override, b"override")
            await writer.drain()
            return True
        if path == "/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
        if path in ("/echo", "/continue"):
            self._send(writer, 200, seen.body)
        elif path == "/head":
            self._send(writer, 200, raw)
        elif path == "/chunked":
            n = int(query.get("n", "3"))
            parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
            parts += [b"5\r\npart%d\r\n" % (i % 10) for i in range(n)]
            parts.append(b"0\r\n\r\n")
            writer.write(b"".join(parts))
        elif path == "/big":
            n = int(query.get("n", "1000000"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            block = b"x" * 65536
            sent = 0
            while sent < n:
                piece = block[: n - sent]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
        elif path == "/close":
            self._send(writer, 200, b"bye", extra=b"Connection: close\r\n")
            await writer.drain()
            return False
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil close body")
            await writer.drain()
            return False
        elif path == "/hop":
            self._send(
                writer,
                200,
                b"hop",
                extra=b"Connection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=30\r\n"
                b"Proxy-Connection: keep-alive\r\nTrailer: x-t\r\nUpgrade: h2c\r\n",
            )
        elif path == "/reset":
            transport = writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return False
        elif path == "/status":
            self._send(writer, int(query.get("code", "200")), b"status")
        else:
            self._send(writer, 200, b"hello world\n")
        await writer.drain()
        return True

    def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, extra: bytes = b""
    ) -> None:
        ka = b""
        if self.keep_alive_header is not None:
            ka = b"Keep-Alive: " + self.keep_alive_header.encode() + b"\r\n"
        if self.tag is not None:
            ka += b"X-Origin: " + self.tag.encode() + b"\r\n"
        writer.write(
            b"%s %d OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s%s\r\n%s"
            % (self.version.encode(), status, len(body), ka, extra, body)
        )

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", ""):
            out = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(out)
                out += await reader.readexactly(size)
                await reader.readexactly(2)
        length = int(headers.get("content-length", "0"))
        return await reader.readexactly(length) if length else b""

    async def _sink(self, reader: asyncio.StreamReader, headers: dict[str, str], rate: int) -> int:
        """Read a Content-Length body ``rate`` bytes per 50 ms, keeping none of it."""
        left = int(headers.get("content-length", "0"))
        total = 0
        while left:
            budget = min(rate, left)
            while budget:
                data = await reader.read(min(budget, 1 << 20))
                if not data:
                    return total
                total += len(data)
                left -= len(data)
                budget -= len(data)
            await asyncio.sleep(0.05)
        return total


@contextlib.asynccontextmanager
async def running_origin(**kwargs: object):  # type: ignore[no-untyped-def]
    origin = await Origin(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield origin
    finally:
        await origin.stop()
