"""Push fan-out: time from one API write until N watchers have ACKed it.

``python -m bench.push [--watchers 10,100,1000] [--writes 3]`` starts a real
``meshcontrol run`` (port 0, a temporary data directory), then for each N
connects N simulated sidecars in this process (asyncio long-poll clients on one
aiohttp session, each polling its own scoped snapshot and ACKing it as a
sidecar does), waits until the control plane shows every one of them waiting,
and times ``--writes`` writes (a policy of the service they all call): from
just before the PUT until the last of the N ACKs has been answered.  It prints
the median, best and worst of those writes per N.

The watchers only parse JSON and ACK: what is measured is the control plane's
fan-out (wake, scope and serialise N snapshots, take N ACKs) plus loopback
HTTP, not the sidecars' compile step.  Both ends share the machine's cores,
so compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import ProcessError, ProcessGroup, wait_log

ADMIN_TOKEN = "bench-admin-token"
READ_TOKEN = "bench-read-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
LISTENING = re.compile(r"listening address=\S+ port=(\d+)")


def policy(serial: int) -> dict[str, Any]:
    """A policy different from every earlier one, so that each write is a push."""
    return {"circuit_breakers": {"max_requests": 1000 + serial}}


class Fleet:
    """N watchers and the bookkeeping of which version each last ACKed."""

    def __init__(self, base: str, http: aiohttp.ClientSession, size: int, tag: str) -> None:
        self.base = base
        self.http = http
        self.nodes = [f"bench-{tag}-{i}" for i in range(size)]
        self.acked: dict[str, int] = {}
        self.target: int | None = None
        self.reached = 0
        self.all_acked = asyncio.Event()
        self.last_ack_at = 0.0
        self.errors: list[str] = []

    async def watch(self, node: str) -> None:
        index: int | None = None
        while True:
            params = {"node": node, "service": "reviews", "upstreams": "ratings", "wait": "60s"}
            if index is not None:
                params["index"] = str(index)
            async with self.http.get(
                f"{self.base}/v1/snapshot", params=params, headers=READER
            ) as response:
                if response.status == 304:
                    continue
                if response.status != 200:
                    self.errors.append(f"poll {response.status}")
                    await asyncio.sleep(0.5)
                    continue
                delivery: dict[str, Any] = await response.json()
            ack = {"node": node, "version": delivery["version"], "nonce": delivery["nonce"]}
            async with self.http.post(f"{self.base}/v1/ack", json=ack, headers=READER) as r:
                if r.status != 200:
                    self.errors.append(f"ack {r.status}")
                await r.read()
            index = delivery["version"]
            self.acked[node] = index
            if self.target is not None and index >= self.target:
                self.reached += 1
                if self.reached == len(self.nodes):
                    self.last_ack_at = time.perf_counter()
                    self.all_acked.set()

    def expect(self, version: int) -> None:
        self.target = version
        self.reached = sum(1 for v in self.acked.values() if v >= version)
        self.all_acked.clear()


async def _json(response: Any) -> Any:
    async with response as r:
        if r.status >= 300:
            raise RuntimeError(f"{r.method} {r.url} -> {r.status}: {await r.text()}")
        return await r.json()


async def _all_waiting(fleet: Fleet, within: float) -> None:
    """Until the control plane shows every node of ``fleet`` holding a poll."""
    names = set(fleet.nodes)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = await _json(fleet.http.get(f"{fleet.base}/v1/proxies", headers=READER))
        waiting = sum(1 for p in body["proxies"] if p["id"] in names and p["watching"])
        if waiting == len(names) and len(fleet.acked) == len(names):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"not every watcher is waiting after {within:.0f}s")


async def measure(base: str, size: int, writes: int, serial: int) -> list[float]:
    """Seconds from each write until all ``size`` watchers ACKed it."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        fleet = Fleet(base, http, size, f"{size}-{serial}")
        tasks = [asyncio.create_task(fleet.watch(n)) for n in fleet.nodes]
        try:
            await _all_waiting(fleet, within=60 + size / 20)
            times = []
            for i in range(writes):
                started = time.perf_counter()
                body = policy(serial * writes + i)
                url = f"{base}/v1/policies/ratings"
                written = await _json(http.put(url, json=body, headers=ADMIN))
                fleet.expect(written["version"])
                if fleet.reached < size:
                    await asyncio.wait_for(fleet.all_acked.wait(), 60)
                else:
                    fleet.last_ack_at = time.perf_counter()
                times.append(fleet.last_ack_at - started)
                await _all_waiting(fleet, within=60)
            if fleet.errors:
                raise RuntimeError(f"watchers saw errors: {sorted(set(fleet.errors))}")
            return times
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def start_control(group: ProcessGroup, data_dir: Path) -> str:
    log = data_dir / "meshcontrol.log"
    proc = group.start(
        [sys.executable, "-m", "control", "run", "--port", "0"],
        log,
        env={
            "MESHCONTROL_DATA_DIR": str(data_dir),
            "MESHCONTROL_ADMIN_TOKEN": ADMIN_TOKEN,
            "MESHCONTROL_READ_TOKEN": READ_TOKEN,
        },
    )
    port = wait_log(log, LISTENING, proc, timeout_s=30)[0].group(1)
    return f"http://127.0.0.1:{port}"


def table(results: dict[int, list[float]]) -> str:
    lines = [
        "push fan-out: write -> all watchers ACKed (ms)",
        f"{'watchers':>9} {'median':>9} {'best':>9} {'worst':>9} {'writes':>7}",
    ]
    for size, times in results.items():
        ms = [t * 1000 for t in times]
        lines.append(
            f"{size:>9} {statistics.median(ms):>9.1f} {min(ms):>9.1f} {max(ms):>9.1f} {len(ms):>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__)
    parser.add_argument(
        "--watchers", default="10,100,1000", help="fleet sizes, comma-separated (%(default)s)"
    )
    parser.add_argument("--writes", type=int, default=3, help="timed writes per size")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.watchers.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.writes < 1:
        parser.error("sizes and --writes must be positive")
    group = ProcessGroup()
    results: dict[int, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
            base = start_control(group, Path(tmp))
            for serial, size in enumerate(sizes):
                results[size] = asyncio.run(measure(base, size, args.writes, serial))
                print(
                    f"watchers={size} median_ms={statistics.median(results[size]) * 1000:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
            group.stop_all()
    except (ProcessError, RuntimeError, TimeoutError) as exc:
        print(f"bench.push: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        group.stop_all()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
