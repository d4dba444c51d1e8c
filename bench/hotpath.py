"""The sidecar's hot path in one process, without sockets: µs per request.

``python -m bench.hotpath`` feeds a keep-alive GET (as wrk sends it) into an
``HttpServer`` over recording transports, answers it from a parked upstream
connection with nginx's 12-byte response, and prints the time per request for
the configs of ``bench.configs``: the default sidecar (``default``), the same
with metrics off (``nometrics``), the 90/10 split (``split``), the policy
chain (``policy``: rate limit and authz on the inbound listener), tracing at
1% sampling (``trace``) and three endpoints balanced by round robin
(``rr3``) or least request (``lr3``).
Everything the runtime puts on the path is there (resolver, pool,
``MeshObserver`` with its metrics, the policy chain); only the kernel and the
event loop's I/O are not.  It is the harness that tells which change of the
Python path pays; ``make bench`` still gives the ratios that count.

``--profile`` prints a cProfile of one config instead; ``--count`` sets the
requests per timed round (the best of ``--rounds`` is printed: on a shared
machine the fastest round is the one least disturbed).  ``--callgrind`` runs
the same loop under valgrind and prints instructions per request instead of
time: slow (a minute or two), but the same figure on a busy machine as on an
idle one, so it tells a 3% change from noise.  It must not open sockets, and
starts no process but valgrind for ``--callgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import operator
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench import configs
from meshproxy.config import Bootstrap, parse_bootstrap
from meshproxy.fastpath import IMPLEMENTATION
from meshproxy.http1 import HttpServer, ListenerContext
from meshproxy.http1.upstream import UpstreamConnection
from meshproxy.observe.observer import MeshObserver
from meshproxy.observe.tracing import ExchangeTracer
from meshproxy.runtime import Runtime, install_uvloop, make_metrics
from meshproxy.settings import Settings

KINDS = ("default", "nometrics", "split", "policy", "trace", "rr3", "lr3")
ORIGIN_PORTS = (19001, 19002, 19003)  # never bound: the upstream side is simulated

REQUEST = b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 23:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n"
    b"X-Subset: v1\r\n\r\nhello world\n"
)


def bootstrap(kind: str) -> Bootstrap:
    if kind == "default":
        data = configs.meshproxy_bootstrap(ORIGIN_PORTS)
    elif kind == "nometrics":
        data = configs.meshproxy_bootstrap(ORIGIN_PORTS, observability="no_metrics")
    elif kind == "split":
        data = configs.routing_bootstrap(ORIGIN_PORTS, "split")
    elif kind == "policy":
        data = configs.meshproxy_bootstrap(ORIGIN_PORTS, configs.PolicyChain())
    elif kind == "trace":
        data = configs.meshproxy_bootstrap(ORIGIN_PORTS, observability="trace_1pct")
    elif kind in ("rr3", "lr3"):
        policy = "round_robin" if kind == "rr3" else "least_request"
        data = configs.routing_bootstrap(ORIGIN_PORTS, policy)
    else:
        raise ValueError(f"unknown config {kind!r}")
    return parse_bootstrap(yaml.safe_dump(data), f"<{kind}>")


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Wire:
    """The part of a transport the protocols use; writes are only counted."""

    __slots__ = ("conn", "harness", "writes")

    def __init__(self, harness: Harness | None = None) -> None:
        self.harness = harness
        self.conn: UpstreamConnection | None = None
        self.writes = 0

    def write(self, data: bytes | bytearray) -> None:
        self.writes += 1
        if self.harness is not None:
            self.harness.answering = self.conn

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the harness's connections must stay open")

    def abort(self) -> None:
        self.close()


class Harness:
    """One client connection of one config's first listener, and a parked
    upstream connection per endpoint."""

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        boot = bootstrap(kind)
        metrics = make_metrics(boot)
        rt = Runtime(boot, Settings(), metrics)
        observer = MeshObserver.from_bootstrap(boot, metrics)
        if observer.tracer is not None:
            # Spans go nowhere: the harness measures the data path, not an
            # exporter retrying a collector that is not there.
            tracer = ExchangeTracer(
                boot.observability.tracing, boot.node.service, boot.node.id, _Discard()
            )
            observer = MeshObserver(metrics, boot.observability, tracer=tracer)
        rt.mesh_observer = observer
        rt.observer = observer
        resolver = rt.resolver = rt.build_resolver(boot.snapshot)
        listener = boot.listeners[0]
        ctx = self.ctx = ListenerContext(
            loop,
            listener,
            resolver,
            metrics,
            boot.limits.max_head_size,
            boot.limits.max_headers,
            observer=observer,
            source_service=boot.node.service,
        )
        ctx.policy = rt.build_policies(boot.snapshot).get(listener.name)
        self.metrics = metrics
        self.answering: UpstreamConnection | None = None
        self.upstream_writes: list[Wire] = []
        for port in ORIGIN_PORTS:
            up = UpstreamConnection(ctx, ("127.0.0.1", port, None))
            wire = Wire(self)
            wire.conn = up
            up.connection_made(wire)  # type: ignore[arg-type]
            up.reused = True
            ctx.pool.put(up.key, up)
            self.upstream_writes.append(wire)
        self.server = HttpServer(ctx)
        self.client = Wire()
        self.server.connection_made(self.client)  # type: ignore[arg-type]

    def requests(self, count: int) -> None:
        """``count`` request/response exchanges, one after the other."""
        feed = self.server.data_received
        for _ in range(count):
            feed(REQUEST)
            up = self.answering
            self.answering = None
            assert up is not None, "the request did not reach an upstream"
            up.data_received(RESPONSE)

    def check(self, count: int) -> None:
        """Every exchange was answered with one write and counted by the metrics."""
        writes = self.client.writes
        self.requests(count)
        assert self.client.writes - writes == count, "one write per response expected"
        assert self.server.state == 0 and self.server.exchange is None


def timed(run: Callable[[int], None], count: int, rounds: int) -> float:
    """The best µs per request over ``rounds`` rounds of ``count`` requests."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(count)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


async def measure(kinds: list[str], count: int, rounds: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    out: dict[str, float] = {}
    for kind in kinds:
        harness = Harness(kind, loop)
        harness.check(1000)  # warm: caches of the resolver, metrics, status lines
        out[kind] = timed(harness.requests, count, rounds)
    return out


async def profile(kind: str, count: int, top: int) -> None:
    harness = Harness(kind, asyncio.get_running_loop())
    harness.check(1000)
    prof = cProfile.Profile()
    prof.runcall(harness.requests, count)
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


async def counted(kinds: list[str], count: int) -> None:
    """The loop ``--callgrind`` counts: ``operator.call`` marks it for valgrind
    (``--toggle-collect``), which nothing else of the process calls."""
    loop = asyncio.get_running_loop()
    for kind in kinds:
        harness = Harness(kind, loop)
        harness.check(1000)
        operator.call(harness.requests, count)


def callgrind(kinds: list[str], count: int) -> dict[str, float]:
    """Instructions per request of each config, one valgrind run for all."""
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=_operator_call",
            "--dump-after=_operator_call",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.hotpath",
            "--only",
            ",".join(kinds),
            "--count",
            str(count),
            "--counted",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        # One part per dump (callgrind.out.1, .2, ...), the last at exit (no suffix).
        parts = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        totals = []
        for part in parts:
            found = re.search(r"^(?:summary|totals): (\d+)", part.read_text(), re.M)
            if found is not None and int(found.group(1)):
                totals.append(int(found.group(1)))
    if len(totals) != len(kinds):
        raise RuntimeError(f"expected {len(kinds)} profile parts, got {len(totals)}")
    return {kind: total / count for kind, total in zip(kinds, totals, strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--only", default=",".join(KINDS), help="configs: " + ",".join(KINDS))
    parser.add_argument("--count", type=int, default=20000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", metavar="CONFIG", choices=KINDS)
    parser.add_argument("--top", type=int, default=30, help="lines of the profile")
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per request (valgrind)"
    )
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    install_uvloop()
    if args.profile:
        asyncio.run(profile(args.profile, args.count, args.top))
        return 0
    kinds = [k for k in args.only.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown config(s): {', '.join(sorted(unknown))}")
    if args.counted:
        asyncio.run(counted(kinds, args.count))
        return 0
    if args.callgrind:
        count = min(args.count, 2000)
        per_request = callgrind(kinds, count)
        print(f"hot path, in process ({IMPLEMENTATION} fast path), callgrind over {count}")
        for kind, instructions in per_request.items():
            print(f"  {kind:8s} {instructions:9.0f} instructions/request")
        return 0
    results: dict[str, Any] = asyncio.run(measure(kinds, args.count, args.rounds))
    print(
        f"hot path, in process ({IMPLEMENTATION} fast path), best of {args.rounds} x {args.count}"
    )
    for kind, us in results.items():
        print(f"  {kind:8s} {us:7.2f} µs/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
