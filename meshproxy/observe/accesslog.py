"""The access log: one JSON line per (sampled) exchange, to stdout or a file.

How this works.  ``AccessLog.record`` runs on the event loop: it copies the
exchange's fields into a tuple and appends it to a bounded deque, nothing
more.  A writer thread wakes every ``WRITE_INTERVAL`` (or at close), takes
what is queued, formats the lines (``format_line``, pure) and writes them in
one call.  When the deque is full the line is dropped and counted
(``dropped``, and ``meshproxy_access_log_dropped_total``): a slow disk costs
lines, never latency.

Fields (Envoy's names where it has one): ``start_time`` (RFC 3339 UTC, ms),
``method``, ``authority``, ``path``, ``protocol``, ``response_code``,
``response_flags``, ``bytes_received``, ``bytes_sent``, ``duration`` (ms),
``upstream_host``, ``request_id``, ``trace_id``, ``span_id``, ``direction``,
``source_service``, ``destination_service``, ``destination_subset``,
``route``, ``user_agent``.

This room must not write on the event loop.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

from meshproxy.config.observability import AccessLogConfig
from meshproxy.observe.exchange import Exchange

__all__ = ["AccessLog", "format_line", "snapshot"]

WRITE_INTERVAL = 0.05
# Bytes kept of a request target or user agent: the log is not a place for megabyte URLs.
MAX_FIELD = 2048

Entry = tuple[
    float, bytes, bytes, bytes, int, str, int, int, float, str, bytes, str, str, str, str, str,
    str, str, bytes,
]  # fmt: skip


def snapshot(ex: Exchange) -> Entry:
    """The exchange's fields as plain values (the data path may reuse ``ex``)."""
    return (
        ex.start_wall,
        ex.method,
        ex.authority,
        ex.path,
        ex.status,
        ex.flags,
        ex.bytes_in,
        ex.bytes_out,
        ex.duration,
        ex.upstream_host,
        ex.request_id,
        ex.trace_id,
        ex.span_id,
        ex.direction,
        ex.source_service,
        ex.destination_service,
        ex.destination_subset,
        ex.route,
        ex.user_agent,
    )


def _text(raw: bytes) -> str | None:
    if not raw:
        return None
    return raw[:MAX_FIELD].decode("latin-1")


def format_line(entry: Entry) -> str:
    """One JSON object, keys in a fixed order, ending with a newline."""
    (start, method, authority, path, status, flags, bytes_in, bytes_out, duration,
     upstream, request_id, trace_id, span_id, direction, source, destination, subset,
     route, user_agent) = entry  # fmt: skip
    stamp = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds")
    record = {
        "start_time": stamp.replace("+00:00", "Z"),
        "method": _text(method),
        "authority": _text(authority),
        "path": _text(path),
        "protocol": "HTTP/1.1",
        "response_code": status,
        "response_flags": flags,
        "bytes_received": bytes_in,
        "bytes_sent": bytes_out,
        "duration": round(duration * 1000.0, 3),
        "upstream_host": upstream or None,
        "request_id": _text(request_id),
        "trace_id": trace_id or None,
        "span_id": span_id or None,
        "direction": direction,
        "source_service": source,
        "destination_service": destination,
        "destination_subset": subset,
        "route": route,
        "user_agent": _text(user_agent),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


class AccessLog:
    """Queue on the loop, write from a thread; ``start()`` before, ``close()`` after."""

    def __init__(
        self,
        config: AccessLogConfig,
        on_drop: Callable[[int], None] | None = None,
        stream: IO[str] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.sampling = config.sampling
        self._cap = config.queue_size
        self._queue: deque[Entry] = deque()
        self._on_drop = on_drop
        self._stream = stream
        self._own_stream = False
        self._random = rand
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        if self._stream is None:
            if self.config.path == "-":
                self._stream = sys.stdout
            else:
                self._stream = open(self.config.path, "a", encoding="utf-8")  # noqa: SIM115
                self._own_stream = True
        self._thread = threading.Thread(target=self._run, name="meshproxy-access-log", daemon=True)
        self._thread.start()

    def record(self, ex: Exchange) -> None:
        """Queue ``ex`` for writing if it is sampled and there is room; never blocks."""
        sampling = self.sampling
        if sampling < 1.0 and self._random() >= sampling:
            return
        queue = self._queue
        if len(queue) >= self._cap:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
            return
        queue.append(snapshot(ex))

    def close(self) -> None:
        """Write what is queued and stop the thread (blocks until it has)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._own_stream and self._stream is not None:
            self._stream.close()
            self._stream = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(WRITE_INTERVAL)
            self._write_queued()
            if stopping:
                return

    def _write_queued(self) -> None:
        queue = self._queue
        while queue and self._stream is not None:
            lines: list[str] = []
            # popleft is atomic against the loop's append: no lock needed.
            while queue and len(lines) < 10_000:
                lines.append(format_line(queue.popleft()))
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):
                # A full disk or a closed stdout must not kill the thread; the lines are lost.
                self.dropped += len(lines)
                continue
            self.written += len(lines)
