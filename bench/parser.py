"""Requests parsed per second: the fast path (Cython and Python) against
httptools and h11, on the same inputs, in one process.

Run ``python -m bench.parser``.  Rounds are interleaved (A, B, C, D, A, ...)
and the table shows medians, with the ratio to h11 and to httptools measured
in the same run (BENCHMARKS.md: machines here are noisy, ratios are not).
Each parser delivers the same things: method, target, header list and body.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType

import h11
import httptools

GET = (
    b"GET /api/v1/users/12345?expand=profile HTTP/1.1\r\n"
    b"Host: users.svc.cluster.local\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"X-Request-Id: 4f9c2d1e-8b7a-4c3d-9e2f-1a0b9c8d7e6f\r\n"
    b"\r\n"
)
POST = (
    b"POST /api/v1/events HTTP/1.1\r\n"
    b"Host: events.svc.cluster.local\r\n"
    b"User-Agent: ingest/2.3\r\n"
    b"Content-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Request-Id: 0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e\r\n"
    b"\r\n"
    b"40\r\n" + b"a" * 64 + b"\r\n"
    b"80;ext=1\r\n" + b"b" * 128 + b"\r\n"
    b"20\r\n" + b"c" * 32 + b"\r\n"
    b"0\r\n\r\n"
)
BODY = b"a" * 64 + b"b" * 128 + b"c" * 32

Parse = Callable[[bytes], int]


def fastpath_parser(fp: ModuleType) -> Parse:
    parse_head, decoder = fp.parse_request_head, fp.ChunkedDecoder
    chunked = fp.BODY_CHUNKED

    def parse(data: bytes) -> int:
        got = parse_head(data)
        assert got is not None
        head, end = got
        n = len(head.headers)
        if head.body == chunked:
            pieces, _ = decoder().feed(data[end:])
            n += len(b"".join(pieces))
        return n

    return parse


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


def httptools_parser() -> Parse:
    # One parser per connection, reused across requests, as uvicorn does.
    sink = _Collect()
    parser = httptools.HttpRequestParser(sink)

    def parse(data: bytes) -> int:
        sink.headers = []
        sink.body = []
        parser.feed_data(data)
        parser.get_method()
        return len(sink.headers) + len(b"".join(sink.body))

    return parse


def h11_parser() -> Parse:
    def parse(data: bytes) -> int:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        n = 0
        body = []
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                n = len(event.headers)
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return n + len(b"".join(body))

    return parse


def parsers() -> dict[str, Parse]:
    out = {}
    try:
        out["_fastpath (Cython)"] = fastpath_parser(importlib.import_module("meshproxy._fastpath"))
    except ImportError:
        print("meshproxy._fastpath is not built; run setup.py build_ext --inplace", file=sys.stderr)
    out["_fastpath_py"] = fastpath_parser(importlib.import_module("meshproxy._fastpath_py"))
    out["httptools"] = httptools_parser()
    out["h11"] = h11_parser()
    return out


def rate(parse: Parse, data: bytes, seconds: float) -> float:
    """Parses per second over about ``seconds`` (batches, so the clock is cheap)."""
    batch, done = 200, 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            parse(data)
        done += batch
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main(rounds: int = 5, seconds: float = 0.4) -> None:
    table = parsers()
    expected = {"GET": len(GET.split(b"\r\n")) - 3, "POST": 5 + len(BODY)}
    for name, parse in table.items():
        for label, data in (("GET", GET), ("POST", POST)):
            assert parse(data) == expected[label], (name, label)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for label, data in (("GET", GET), ("POST", POST)):
            for name, parse in table.items():
                results.setdefault((name, label), []).append(rate(parse, data, seconds))
    print(f"requests parsed per second, median of {rounds} interleaved rounds")
    print(f"{'parser':<20} {'input':<6} {'req/s':>11} {'x h11':>8} {'x httptools':>12}")
    for label in ("GET", "POST"):
        h11_rate = statistics.median(results[("h11", label)])
        ht_rate = statistics.median(results[("httptools", label)])
        for name in table:
            median = statistics.median(results[(name, label)])
            print(
                f"{name:<20} {label:<6} {median:>11,.0f} {median / h11_rate:>8.1f}"
                f" {median / ht_rate:>12.2f}"
            )


if __name__ == "__main__":
    main()
