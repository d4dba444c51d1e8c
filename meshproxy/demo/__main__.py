"""``python -m meshproxy.demo`` (``make demo``): a canary moved by the control plane, live.

Starts ratings v1 and v2 (in this process), a control plane on SQLite and
sidecars in dynamic mode (``meshproxy.demo.dynamic``); applies a 90/10 canary
through the API, sends traffic through the client sidecar's outbound port and
prints the split it observed, then moves the canary to 50/50 and does the same.
Then it prints the URLs to try and keeps everything running until Ctrl-C (or
exits at once with ``--once``).  ``--static`` runs the static mode instead:
one sidecar whose 90/10 route comes from its own config file.  It only drives
the mesh from outside, like any application or operator would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop
import yaml

from meshproxy.demo.dynamic import ControlPlaneError, canary, dynamic_mesh
from meshproxy.demo.origin import SERVICE, RunningOrigin, start_origin
from meshproxy.demo.sidecar import (
    ADMIN_PORT,
    OUTBOUND_PORT,
    Sidecar,
    SidecarError,
    demo_bootstrap,
    port_or_any,
    start_sidecar,
)


@dataclass(frozen=True, slots=True)
class Traffic:
    versions: Counter[str]
    errors: Counter[str]
    seconds: float

    @property
    def answered(self) -> int:
        return sum(self.versions.values())

    def split_line(self) -> str:
        total = self.answered or 1
        shares = ", ".join(
            f"{v} {self.versions[v] / total:.1%} ({self.versions[v]})"
            for v in sorted(self.versions.keys() | {"v1", "v2"})
        )
        errors = sum(self.errors.values())
        detail = f" {dict(self.errors)}" if errors else ""
        return f"split observed: {shares}; errors {errors}{detail}"


async def send_traffic(port: int, requests: int, connections: int) -> Traffic:
    """``requests`` GETs with ``Host: ratings`` over ``connections`` keep-alive
    connections; counts which version answered."""
    versions: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    url = f"http://127.0.0.1:{port}/ratings/1"
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            try:
                async with session.get(url, headers={"Host": SERVICE}) as response:
                    if response.status != 200:
                        errors[f"status {response.status}"] += 1
                        await response.read()
                        continue
                    body = await response.json()
                    versions[str(body.get("version"))] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors[type(exc).__name__] += 1

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        share, extra = divmod(requests, connections)
        await asyncio.gather(
            *(worker(session, share + (1 if i < extra else 0)) for i in range(connections))
        )
    return Traffic(versions, errors, time.perf_counter() - start)


async def wait_ready(admin_port: int, sidecar: Sidecar, timeout_s: float = 15.0) -> None:
    url = f"http://127.0.0.1:{admin_port}/ready"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sidecar.process.returncode is not None:
                raise SidecarError("the sidecar exited:\n" + "\n".join(sidecar.log_tail))
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SidecarError(f"{url} did not answer 200 within {timeout_s:.0f}s")


def print_urls(sidecar: Sidecar) -> None:
    out, admin = sidecar.outbound_port, sidecar.admin_port
    print(
        f"""
try:
  curl -H 'Host: {SERVICE}' http://127.0.0.1:{out}/ratings/1     # through the sidecar
  curl http://127.0.0.1:{admin}/metrics                         # Prometheus metrics
  curl http://127.0.0.1:{admin}/config_dump                     # the config in force
  curl http://127.0.0.1:{admin}/ready                           # readiness""",
        flush=True,
    )


async def run(args: argparse.Namespace) -> int:
    origins: list[RunningOrigin] = []
    main_task = asyncio.current_task()
    assert main_task is not None
    # Explicit handlers: a shell may start the demo with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    with tempfile.TemporaryDirectory(prefix="meshproxy-demo-") as tmp:
        try:
            origins = [await start_origin("v1"), await start_origin("v2")]
            v1, v2 = origins[0].port, origins[1].port
            print(f"demo: {SERVICE} v1 on 127.0.0.1:{v1}, v2 on 127.0.0.1:{v2}", flush=True)
            outbound = port_or_any(OUTBOUND_PORT) if args.port is None else args.port
            admin = port_or_any(ADMIN_PORT) if args.admin_port is None else args.admin_port
            if args.static:
                return await run_static(args, Path(tmp), v1, v2, outbound, admin)
            return await run_dynamic(args, Path(tmp), v1, v2, outbound, admin)
        except (SidecarError, ControlPlaneError) as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            for origin in origins:
                await origin.close()
            print("demo: stopped", flush=True)


async def run_static(
    args: argparse.Namespace, tmp: Path, v1: int, v2: int, outbound: int, admin: int
) -> int:
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump(demo_bootstrap(v1, v2, outbound, admin)))
    sidecar = await start_sidecar(config)
    try:
        await wait_ready(sidecar.admin_port, sidecar)
        print(
            f"demo: sidecar pid {sidecar.process.pid}, outbound 127.0.0.1:"
            f"{sidecar.outbound_port}, admin 127.0.0.1:{sidecar.admin_port}; "
            f"route {SERVICE}: 90% v1, 10% v2",
            flush=True,
        )
        traffic = await measure(args, sidecar)
        print_urls(sidecar)
        await _hold(args)
        return 0 if traffic.answered == args.requests else 1
    finally:
        await sidecar.stop()


async def run_dynamic(
    args: argparse.Namespace, tmp: Path, v1: int, v2: int, outbound: int, admin: int
) -> int:
    async with dynamic_mesh(tmp, v1, v2, outbound, admin) as mesh:
        cp = mesh.cp
        print(f"demo: control plane {cp.url} (SQLite in a temporary directory)", flush=True)
        for sidecar in mesh.sidecars:
            await wait_ready(sidecar.admin_port, sidecar)
        client = mesh.client
        print(
            f"demo: sidecars in dynamic mode: ratings v1 and v2 (inbound), {mesh.client_id} "
            f"(outbound 127.0.0.1:{client.outbound_port}, admin 127.0.0.1:{client.admin_port})",
            flush=True,
        )
        complete = True
        for step, (w1, w2) in enumerate([(90, 10), (50, 50)], 1):
            version = await cp.put(f"/v1/routes/{SERVICE}", canary(w1, w2))
            await cp.acked(mesh.client_id, version)
            print(
                f"demo: step {step}: PUT /v1/routes/{SERVICE} {w1}% v1, {w2}% v2 -> "
                f"version {version}, ACKed by the sidecar",
                flush=True,
            )
            traffic = await measure(args, client)
            complete = complete and traffic.answered == args.requests
        print_urls(client)
        print(
            f"  curl -H 'Authorization: Bearer {cp.read_token}' {cp.url}/v1/proxies"
            "   # who runs which version",
            flush=True,
        )
        await _hold(args)
        return 0 if complete else 1


async def measure(args: argparse.Namespace, sidecar: Sidecar) -> Traffic:
    traffic = await send_traffic(sidecar.outbound_port, args.requests, args.connections)
    print(
        f"demo: {args.requests} requests over {args.connections} keep-alive "
        f"connections in {traffic.seconds:.2f}s",
        flush=True,
    )
    print(traffic.split_line(), flush=True)
    return traffic


async def _hold(args: argparse.Namespace) -> None:
    if not args.once:
        print("\nrunning; Ctrl-C to stop", flush=True)
        await _until_stopped()


async def _until_stopped() -> None:
    # Ctrl-C and SIGTERM cancel the main task (run's handlers); here that is
    # the normal way out, and the caller's cleanup follows.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshproxy.demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="send the traffic, print, exit")
    parser.add_argument(
        "--static",
        action="store_true",
        help="static mode: one sidecar with its route in its config file, no control plane",
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--port", type=int, default=None, help=f"outbound port (default {OUTBOUND_PORT} if free)"
    )
    parser.add_argument(
        "--admin-port", type=int, default=None, help=f"admin port (default {ADMIN_PORT} if free)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.connections < 1:
        parser.error("--requests and --connections must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # a signal before the demo was up
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
