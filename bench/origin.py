"""A uvloop origin for the benchmark: every request gets ``200 hello world``.

The alternative to the nginx origin (``--origin uvloop``), for machines without
nginx.  One process serves several ports; the answer on the n-th port carries
``X-Subset: vn`` so that a traffic split can be observed, like the nginx origin.
It reads requests with httptools (keep-alive and pipelining work) and must stay
trivial: it is the ceiling the proxies are measured against.

Run: ``python -m bench.origin --ports 2`` prints ``listening port=N`` per port.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from typing import cast

import httptools
import uvloop

from bench.configs import ORIGIN_BODY


def _response(subset: str, keep_alive: bool) -> bytes:
    body = ORIGIN_BODY.encode()
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"X-Subset: %s\r\nConnection: %s\r\n\r\n%s" % (len(body), subset.encode(), connection, body)
    )


class OriginProtocol(asyncio.Protocol):
    def __init__(self, subset: str) -> None:
        self._keep = _response(subset, True)
        self._close = _response(subset, False)
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, not assert.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._parser.should_keep_alive():
            self._transport.write(self._keep)
        else:
            self._transport.write(self._close)
            self._transport.close()


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for i, port in enumerate(ports, start=1):
        subset = f"v{i}"
        server = await loop.create_server(
            functools.partial(OriginProtocol, subset), "127.0.0.1", port, backlog=4096
        )
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        print(f"listening port={bound} subset={subset}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.origin", description=__doc__)
    parser.add_argument("--ports", type=int, default=1, help="how many ports (OS-chosen)")
    parser.add_argument("--port", type=int, action="append", help="a given port (repeatable)")
    args = parser.parse_args()
    uvloop.run(serve(args.port or [0] * args.ports))


if __name__ == "__main__":
    main()
