"""A raw HTTP/1.1 client for the proxy tests: bytes out, parsed responses in.

Raw on purpose: the tests send malformed, pipelined and half-closed traffic
that a real client library refuses to produce.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Response:
    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_body: bytes  # as framed on the wire (chunked stays chunked)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    headers = [
        (n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)
    ]
    resp = Response(version, int(status), headers, b"", b"")
    if resp.status < 200 or resp.status in (204, 304) or method == "HEAD":
        return resp
    te = (resp.header("transfer-encoding") or "").lower()
    if "chunked" in te:
        raw = bytearray()
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    raw += line
                    if line == b"\r\n":
                        break
                break
            data = await reader.readexactly(size + 2)
            raw += data
            body += data[:-2]
        resp.body, resp.raw_body = bytes(body), bytes(raw)
    elif resp.header("content-length") is not None:
        data = await reader.readexactly(int(resp.header("content-length") or "0"))
        resp.body = resp.raw_body = data
    else:
        data = await reader.read(-1)
        resp.body = resp.raw_body = data
    return resp


class Conn:
    """One client connection; every await is bounded by the caller's timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, method: str = "GET") -> Response:
        return await read_response(self.reader, method)

    async def request(self, data: bytes, method: str = "GET") -> Response:
        self.send(data)
        return await self.response(method)

    async def closed_by_peer(self) -> bytes:
        """Wait for the peer to close (EOF or reset), then close our side too.

        Returns the bytes that came before the close (expected: none)."""
        extra = b""
        try:
            while data := await self.reader.read(65536):
                extra += data
        except ConnectionError:
            pass
        await self.close()
        return extra

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def get(path: str, host: str = "web", extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode()
