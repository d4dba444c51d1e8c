"""The uvloop origin answers every request, pipelined or not, with its subset."""

import asyncio

from bench.origin import OriginProtocol


async def test_pipelined_requests_get_answers_in_order_with_the_subset_header() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: OriginProtocol("v2"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await reader.readuntil(b"hello world\n")
            second = await reader.readuntil(b"hello world\n")
            writer.write(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            last = await reader.read()
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    for answer in (first, second):
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"X-Subset: v2\r\n" in answer
        assert b"Content-Length: 12\r\n" in answer
        assert b"Connection: keep-alive\r\n" in answer
    assert b"Connection: close\r\n" in last and last.endswith(b"\r\n\r\nhello world\n")


async def test_garbage_closes_the_connection() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: OriginProtocol("v1"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00\x01 not http\r\n\r\n")
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
