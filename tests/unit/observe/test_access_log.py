"""The access log: JSON lines written off the loop, sampled, dropped (and counted) when full."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from meshproxy.config.observability import AccessLogConfig
from meshproxy.observe.accesslog import AccessLog, format_line, snapshot
from meshproxy.observe.exchange import Exchange


def exchange(status: int = 200, path: bytes = b"/ratings/1?x=1") -> Exchange:
    ex = Exchange("outbound", "outbound", "reviews")
    ex.destination_service = "ratings"
    ex.destination_subset = "v2"
    ex.route = "r0"
    ex.method = b"GET"
    ex.authority = b"ratings:9080"
    ex.path = path
    ex.status = status
    ex.flags = "UT" if status == 504 else "-"
    ex.bytes_in = 12
    ex.bytes_out = 345
    ex.start_wall = 1_700_000_000.25
    ex.duration = 0.0125
    ex.upstream_host = "127.0.0.1:9001"
    ex.request_id = b"req-1"
    ex.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    ex.span_id = "00f067aa0ba902b7"
    return ex


def test_line_carries_the_exchange_fields() -> None:
    record = json.loads(format_line(snapshot(exchange(504))))
    assert record == {
        "start_time": "2023-11-14T22:13:20.250Z",
        "method": "GET",
        "authority": "ratings:9080",
        "path": "/ratings/1?x=1",
        "protocol": "HTTP/1.1",
        "response_code": 504,
        "response_flags": "UT",
        "bytes_received": 12,
        "bytes_sent": 345,
        "duration": 12.5,
        "upstream_host": "127.0.0.1:9001",
        "request_id": "req-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "direction": "outbound",
        "source_service": "reviews",
        "destination_service": "ratings",
        "destination_subset": "v2",
        "route": "r0",
        "user_agent": None,
    }


def test_line_is_one_line_whatever_the_path_holds() -> None:
    line = format_line(snapshot(exchange(path=b'/a"b\n\xff' + b"x" * 5000)))
    assert line.endswith("\n") and line.count("\n") == 1
    assert len(json.loads(line)["path"]) == 2048


def test_log_is_written_by_the_thread_and_flushed_at_close() -> None:
    stream = io.StringIO()
    log = AccessLog(AccessLogConfig(enabled=True), stream=stream)
    log.start()
    for i in range(100):
        log.record(exchange(200 + i % 2))
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 100
    assert [json.loads(line)["response_code"] for line in lines[:2]] == [200, 201]
    assert log.written == 100 and log.dropped == 0


def test_file_path_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    log = AccessLog(AccessLogConfig(enabled=True, path=str(path)))
    log.start()
    log.record(exchange())
    log.close()
    first, second = path.read_text().splitlines()
    assert first == "earlier"
    assert json.loads(second)["path"] == "/ratings/1?x=1"


class BlockedStream(io.StringIO):
    """A stream whose writes wait until released: a disk that stalls."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_stalled_writer_never_blocks_recording_and_drops_are_counted() -> None:
    stream = BlockedStream()
    drops: list[int] = []
    log = AccessLog(
        AccessLogConfig(enabled=True, queue_size=10), on_drop=drops.append, stream=stream
    )
    log.start()
    for _ in range(500):
        log.record(exchange())  # returns at once although the writer is stuck
    stream.release.set()
    log.close()
    assert log.dropped == len(drops) > 0
    assert log.written + log.dropped == 500
    assert log.written <= 10 + 10  # the queue's bound, plus what the thread took before it stalled


def test_sampling_keeps_about_the_configured_share() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.95] * 25)
    stream = io.StringIO()
    log = AccessLog(
        AccessLogConfig(enabled=True, sampling=0.1), stream=stream, rand=lambda: next(draws)
    )
    log.start()
    for _ in range(100):
        log.record(exchange())
    log.close()
    assert len(stream.getvalue().splitlines()) == 50  # draws 0.05 and 0.09 are under 0.1
