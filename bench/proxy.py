"""The proxy benchmark (``make bench``): every target under the same wrk load,
interleaved round after round, reported as medians and ratios to HAProxy.

This module is the sequence only: start the origin and the targets, warm each
up, run the rounds (A, B, C, ... then again), print the table, write
``bench/results/latest.json``, and stop every process it started, also on
Ctrl-C or SIGTERM.  Configs, parsing and arithmetic live in ``configs``,
``wrk`` and ``report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import configs
from bench import mtls as mtls_bench
from bench.chain import Part, probe_chain
from bench.procs import ProcessError, ProcessGroup, pinned, tree_cpu_seconds, tree_rss_kib
from bench.report import Sample, check_bars, format_bars, format_table, summarize
from bench.targets import (
    Run,
    Target,
    start_aiohttp,
    start_direct,
    start_haproxy,
    start_meshproxy,
    start_nginx,
    start_origin,
    start_two_hops,
)
from bench.wrk import WrkError, WrkResult, run_wrk, wrk_command

TARGETS = [
    "direct",
    "haproxy",
    "nginx",
    "aiohttp",
    "meshproxy",
    "meshproxy-nometrics",
    "meshproxy-trace1",
    "meshproxy-split",
    "meshproxy-rr3",
    "meshproxy-lr3",
    "meshproxy-policy",
    "meshproxy-2hop",
    "meshproxy-2hop-mtls",
]
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load first")
    parser.add_argument(
        "--only", default="", help=f"comma-separated targets, from: {','.join(TARGETS)}"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the scheduler place wrk, the origin and the target (default: pinned apart)",
    )
    parser.add_argument(
        "--origin",
        choices=["nginx", "uvloop"],
        default="nginx" if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx") else "uvloop",
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    args.targets = [t for t in args.only.split(",") if t] or list(TARGETS)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.rounds < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be at least 1")
    return args


def _starters(
    run: Run, origin: Target, handshake: dict[str, Any]
) -> dict[str, Callable[[], Target]]:
    def mesh(name: str, chain: configs.PolicyChain | None, note: str) -> Callable[[], Target]:
        return lambda: start_meshproxy(
            run, name, configs.meshproxy_bootstrap(run.origin_ports, chain), note
        )[0]

    def routed(name: str, kind: str, note: str) -> Callable[[], Target]:
        return lambda: start_meshproxy(
            run, name, configs.routing_bootstrap(run.origin_ports, kind), note
        )[0]

    def two_hops(name: str, mtls: bool) -> Callable[[], Target]:
        def start() -> Target:
            first, second, files = start_two_hops(run, name, mtls)
            if mtls:  # where the handshake rate is measured after the rounds
                handshake.update(port=second.port, files=files)
            return dataclasses.replace(first, also=(second.pid,))

        return start

    return {
        "direct": lambda: start_direct(run, origin),
        "haproxy": lambda: start_haproxy(run),
        "nginx": lambda: start_nginx(run),
        "aiohttp": lambda: start_aiohttp(run),
        "meshproxy": mesh("meshproxy", None, "default config"),
        "meshproxy-nometrics": lambda: start_meshproxy(
            run,
            "meshproxy-nometrics",
            configs.meshproxy_bootstrap(run.origin_ports, observability="no_metrics"),
            "default config, metrics off",
        )[0],
        "meshproxy-trace1": lambda: start_meshproxy(
            run,
            "meshproxy-trace1",
            configs.meshproxy_bootstrap(run.origin_ports, observability="trace_1pct"),
            "default config + OTLP tracing at 1%",
        )[0],
        "meshproxy-split": routed("meshproxy-split", "split", "90/10 split route"),
        "meshproxy-rr3": routed("meshproxy-rr3", "round_robin", "round robin, 3 origins"),
        "meshproxy-lr3": routed("meshproxy-lr3", "least_request", "least request, 3 origins"),
        "meshproxy-policy": lambda: start_meshproxy(
            run,
            "meshproxy-policy",
            configs.meshproxy_bootstrap(run.origin_ports, configs.PolicyChain()),
            "rate limit + authz + 90/10 split, inbound gateway listener",
            listener="inbound",
        )[0],
        "meshproxy-2hop": two_hops("meshproxy-2hop", mtls=False),
        "meshproxy-2hop-mtls": two_hops("meshproxy-2hop-mtls", mtls=True),
    }


def _load(
    target: Target, args: argparse.Namespace, seconds: int, driver: set[int] | None = None
) -> WrkResult | str:
    cmd = wrk_command(
        target.url,
        connections=args.connections,
        duration_s=seconds,
        headers={"Host": configs.SERVICE},
    )
    try:
        return run_wrk(cmd, seconds, pinned(driver))
    except WrkError as exc:
        return str(exc).splitlines()[0]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def measure(args: argparse.Namespace, workdir: Path, group: ProcessGroup) -> dict[str, Any]:
    origin, ports = start_origin(group, workdir, args.origin)
    run = Run(group, workdir, ports)
    handshake: dict[str, Any] = {}
    starters = _starters(run, origin, handshake)
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    chain: list[Part] = []
    for name in args.targets:
        try:
            target = starters[name]()
        except ProcessError as exc:
            unavailable[name] = str(exc).strip().splitlines()[0]
            print(f"  {name}: not measured: {unavailable[name]}", file=sys.stderr)
            continue
        if name == "meshproxy-policy":
            chain = probe_chain(run, target.port)
        targets.append(target)
        print(f"  {name}: {target.url} ({target.note})", file=sys.stderr)
    for part in chain:
        print(f"  policy chain: {part.describe()}", file=sys.stderr)

    if args.warmup:
        for target in targets:
            _load(target, args, args.warmup, group.cpus("driver"))
    samples: list[Sample] = []
    for rnd in range(1, args.rounds + 1):
        # Every other round in reverse order: a target's place in the round
        # (first after a pause, right after a given other) moves its figure by
        # a few percent on a shared machine; alternating cancels that out of
        # the per-round ratios' medians.
        for target in targets if rnd % 2 else targets[::-1]:
            cpu = tree_cpu_seconds(target.pids)
            outcome = _load(target, args, args.duration, group.cpus("driver"))
            cpu = tree_cpu_seconds(target.pids) - cpu
            rss = tree_rss_kib(target.pid)
            if isinstance(outcome, str):
                samples.append(Sample(target.name, rnd, None, rss, outcome))
                line = f"wrk failed: {outcome}"
            else:
                samples.append(Sample(target.name, rnd, outcome, rss, cpu_s=cpu))
                line = f"{outcome.requests_per_s:,.0f} req/s, {cpu:.2f} CPU-s"
                if outcome.has_errors:
                    line += f" ({outcome.non_2xx} non-2xx, {outcome.socket_errors} socket errors)"
            print(f"  round {rnd}/{args.rounds} {target.name}: {line}", file=sys.stderr)

    handshakes = None
    if handshake:
        rate, failed = mtls_bench.handshake_rate(
            handshake["port"], handshake["files"], configs.SERVICE, args.duration
        )
        handshakes = {"per_s": round(rate, 1), "failed": failed, "duration_s": args.duration}
        print(f"  mTLS handshakes into the second hop: {rate:,.0f}/s", file=sys.stderr)

    rows = summarize(samples, [t.name for t in targets])
    bars = check_bars(samples)
    print()
    print(format_table(rows))
    if bars:
        print(format_bars(bars))
    if handshakes is not None:
        print(
            "mTLS handshakes (new connections, one request each) into the second hop: "
            f"{handshakes['per_s']:,.0f}/s, {handshakes['failed']} failed "
            "(the client runs on the same cores)"
        )
    for name, why in unavailable.items():
        print(f"  {name}: not measured: {why}")
    if chain:
        print("meshproxy-policy chain: " + "; ".join(part.describe() for part in chain))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": 1,
            "origin": args.origin,
            "fastpath": _fastpath(),
            "cpus": (
                {role: sorted(cpus) for role, cpus in group.placement.items()}
                if group.placement is not None
                else None
            ),
        },
        "targets": {t.name: {"url": t.url, "note": t.note} for t in targets},
        "unavailable": unavailable,
        "goals": [
            {
                "target": b.bar.target,
                "baseline": b.bar.baseline,
                "at_least": b.bar.at_least,
                "what": b.bar.what,
                "ratio": b.ratio,
                "rounds": b.rounds,
                "met": b.met,
            }
            for b in bars
        ],
        "mtls_handshakes": handshakes,
        "policy_chain": [
            {"part": p.name, "active": p.active, "evidence": p.evidence} for p in chain
        ],
        "summary": [
            {
                "target": r.target,
                "runs": r.runs,
                "rps": r.rps,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "ratio_to_haproxy": r.ratio,
                "rss_kib": r.rss_kib,
                "flagged": r.flagged,
            }
            for r in rows
        ],
        "samples": [
            {
                "target": s.target,
                "round": s.round,
                "rss_kib": s.rss_kib,
                "error": s.error,
                **(s.result.as_dict() if s.result else {}),
            }
            for s in samples
        ],
    }


def _fastpath() -> str:
    try:
        from meshproxy import fastpath
    except ImportError:
        return "unavailable"
    return str(fastpath.IMPLEMENTATION)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    # Both as Ctrl-C, also when a shell started the harness with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    group = ProcessGroup(pin=args.pin)
    where = "not pinned"
    if group.placement is not None:
        where = "wrk and origin on CPU {}, target on CPU {}".format(
            *(",".join(map(str, sorted(group.placement[r]))) for r in ("driver", "target"))
        )
    print(
        f"bench: {args.rounds} round(s) x {args.duration}s, wrk -t1 -c{args.connections}, "
        f"origin {args.origin}, {os.cpu_count()} cpus, {where}",
        file=sys.stderr,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="meshproxy-bench-") as tmp:
            try:
                result = measure(args, Path(tmp), group)
            finally:
                group.stop_all()
    except KeyboardInterrupt:
        print("\ninterrupted; every process stopped", file=sys.stderr)
        return 130
    except ProcessError as exc:
        print(f"bench: the origin did not start: {exc}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0
