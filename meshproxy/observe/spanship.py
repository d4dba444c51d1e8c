"""Sampled spans exported from a child process, so that no exporter runs in the worker.

Why.  Building, encoding and posting a span with the OpenTelemetry SDK costs
about 80 µs of CPU.  At 1% sampling that is under 2% of a saturated worker's
CPU, yet done in the SDK's thread inside the worker it cost 9-14% of the
worker's throughput in ``make bench`` (the same run with an exporter that
drops spans lost 2%): the thread shares the worker's GIL, core and caches,
and wins the core whenever it wakes.  So the worker only ships each sampled
exchange's fields, and a child process at the lowest CPU priority (nice 19)
builds the spans and runs the SDK's batching exporter.  On a saturated core
the child runs in the gaps: in a 20 s run at 16k requests/s, pinned to the
worker's core, it exported all of its ~3,200 spans, 94% of them during the
load.  The cost is memory: the child is a second interpreter with the SDK
(about 45 MiB).  ``tracing.export_in: thread`` keeps the exporter in the
worker instead.

How.  ``SpanShipper`` has the tracer's interface (``sampler``, ``record``,
``start``, ``aclose``).  ``record`` appends the exchange's fields (plain
strings and numbers, ``tracing.exchange_fields``) to a list on the loop;
every ``schedule_delay``, or when ``max_export_batch_size`` are pending, the
list goes to the child's stdin as one frame: a 4-byte big-endian length and
a ``marshal`` dump (the child is ours and reads only its parent's pipe).  The
pipe is written without blocking: past ``MAX_BUFFERED`` bytes waiting (a child
that cannot keep up) frames are dropped and counted
(``meshproxy_spans_dropped_total``), as the SDK's own queue drops spans when
full.  The child (``python -m meshproxy.observe.spanship``, with the tracing
config as JSON in ``MESHPROXY_SPANSHIP_SETUP``) turns each record into a span
with ``tracing.ExchangeTracer`` and exits after exporting what it has when
its stdin closes: at ``aclose``, or when the worker dies.  It ignores SIGINT
and SIGTERM, which the process group gets, so that it outlives the worker's
drain long enough to export the last batch.

Each worker has its own child.  If the child cannot start or dies, spans are
dropped and counted, and the failure is logged once; requests never wait for
tracing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import marshal
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from meshproxy.config.observability import TracingConfig
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.tracing import ExchangeTracer, RatioSampler, exchange_fields

__all__ = ["MAX_BUFFERED", "SETUP_ENV", "SpanShipper", "main"]

log = logging.getLogger("meshproxy")

SETUP_ENV = "MESHPROXY_SPANSHIP_SETUP"  # the child's setup: tracing config, service, instance
MAX_BUFFERED = 4 << 20  # bytes waiting for a slow child before frames are dropped
_MAX_FRAME = 64 << 20


class SpanShipper:
    """The worker's side: ships sampled exchanges to the exporting child."""

    def __init__(
        self,
        config: TracingConfig,
        service_name: str,
        instance_id: str,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self._on_drop = on_drop
        self.sampler = RatioSampler(config.sampling)
        self.dropped = 0  # spans lost (a lower bound: an unsent frame counts as one)
        self._argv = [sys.executable, "-m", "meshproxy.observe.spanship"]
        # In the environment, not the command line that ``ps`` shows to all.
        self._env = {
            **os.environ,
            SETUP_ENV: json.dumps(
                {
                    "config": config.model_dump(mode="json"),
                    "service": service_name,
                    "instance": instance_id,
                }
            ),
        }
        self._pending: list[tuple[Any, ...]] = []
        self._buffer = bytearray()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False
        self._failed = False

    # -- lifecycle --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the child and the periodic shipping (on the worker's loop)."""
        self._loop = loop
        try:
            self._proc = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                env=self._env,
            )
        except OSError as exc:
            self._fail(f"the span exporter did not start: {exc}")
            return
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._timer = loop.call_later(self.config.schedule_delay, self._tick)

    async def aclose(self) -> None:
        """Ship what is pending, close the child's stdin and wait for it to export."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._frame()
        proc = self._proc
        if proc is None:
            return
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False
        await asyncio.to_thread(self._finish, proc)

    def shutdown(self) -> None:
        """For callers without a loop (tests): the same as ``aclose``, blocking."""
        self._frame()
        if self._proc is not None:
            self._finish(self._proc)

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        # In a thread, from here: the loop no longer writes to this pipe.  The
        # child gets one grace period to take the rest and export it all.
        deadline = time.monotonic() + self.config.export_timeout + self.config.schedule_delay + 5.0
        buffer = self._buffer
        while buffer and not self._failed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                del buffer[: os.write(self._fd, buffer)]
            except BlockingIOError:
                select.select([], [self._fd], [], left)
            except OSError:
                break
        if buffer:
            self._drop(1)
            buffer.clear()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # a child already gone
                proc.stdin.close()
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- the data path's call -----------------------------------------------------

    def record(self, ex: Exchange) -> None:
        """Queue a sampled exchange's span (called on the loop, cheap)."""
        if self._failed:
            self._drop(1)
            return
        pending = self._pending
        pending.append(exchange_fields(ex))
        if len(pending) >= self.config.max_export_batch_size:
            self._frame()

    # -- shipping -------------------------------------------------------------------

    def _tick(self) -> None:
        self._frame()
        if self._loop is not None and not self._failed:
            self._timer = self._loop.call_later(self.config.schedule_delay, self._tick)

    def _frame(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._proc is None or self._failed:
            self._drop(len(pending))
            return
        if len(self._buffer) > MAX_BUFFERED:
            self._drop(len(pending))
            return
        data = marshal.dumps(pending)
        self._buffer += len(data).to_bytes(4, "big")
        self._buffer += data
        self._write()

    def _write(self) -> None:
        buffer = self._buffer
        while buffer:
            try:
                sent = os.write(self._fd, buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(f"the span exporter is gone: {exc}")
                return
            del buffer[:sent]
        loop = self._loop
        if loop is None:
            return
        if buffer and not self._writing:
            loop.add_writer(self._fd, self._write)
            self._writing = True
        elif not buffer and self._writing:
            loop.remove_writer(self._fd)
            self._writing = False

    def _drop(self, spans: int) -> None:
        if spans:
            self.dropped += spans
            if self._on_drop is not None:
                self._on_drop(spans)

    def _fail(self, why: str) -> None:
        if not self._failed:
            log.error("tracing stopped: %s; spans are dropped", why)
        self._failed = True
        self._drop(len(self._pending) + (1 if self._buffer else 0))
        self._pending = []
        self._buffer.clear()
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False


# -- the child ----------------------------------------------------------------------


def _frames(stream: Any) -> Any:
    while True:
        head = stream.read(4)
        if len(head) < 4:
            return
        size = int.from_bytes(head, "big")
        if size > _MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        data = stream.read(size)
        if len(data) < size:
            return
        yield marshal.loads(data)


def main(argv: list[str] | None = None) -> int:
    """The exporting child: records from stdin, spans out through the SDK."""
    parser = argparse.ArgumentParser(
        prog="python -m meshproxy.observe.spanship",
        description=f"The exporting child of a sidecar worker; {SETUP_ENV} holds its setup.",
    )
    parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the worker's drain ends us, by EOF
    # The lowest CPU priority: on a busy core the data path runs first, and
    # this process exports in the gaps (frames queue in the pipe meanwhile).
    os.nice(19)
    logging.basicConfig(level=logging.WARNING, format="spanship %(levelname)s %(message)s")
    setup = json.loads(os.environ[SETUP_ENV])
    config = TracingConfig.model_validate(setup["config"])
    tracer = ExchangeTracer(config, setup["service"], setup["instance"])
    try:
        for records in _frames(sys.stdin.buffer):
            for fields in records:
                tracer.record_fields(fields)
    finally:
        tracer.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
