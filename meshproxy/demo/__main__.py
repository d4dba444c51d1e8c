"""``python -m meshproxy.demo`` (``make demo``): a canary moved by the control plane, live.

Starts ratings v1, v2 and a broken v3 (in this process), a control plane on
SQLite and sidecars in dynamic mode (``meshproxy.demo.dynamic``); applies a
90/10 canary through the API, sends traffic through the client sidecar's
outbound port and prints the split it observed, then moves the canary to 50/50
and does the same.  Then, with steady traffic running, a rollout of v2 that the
control plane promotes step by step, and a rollout of v3 (which answers 500)
that it rolls back, each step printed with its weight, the traffic it saw and
the decision's reason (``meshproxy.demo.rollout``).  Then it prints the URLs to
try and keeps everything running until Ctrl-C (or exits at once with
``--once``).  ``--static`` runs the static mode instead: one sidecar whose 90/10
route comes from its own config file.  It only drives the mesh from outside,
like any application or operator would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop
import yaml

from meshproxy.demo.dynamic import ControlPlane, ControlPlaneError, Mesh, canary, dynamic_mesh
from meshproxy.demo.origin import SERVICE, RunningOrigin, start_origin
from meshproxy.demo.rollout import follow_rollout, rollout_spec
from meshproxy.demo.sidecar import (
    ADMIN_PORT,
    OUTBOUND_PORT,
    Sidecar,
    SidecarError,
    demo_bootstrap,
    port_or_any,
    start_sidecar,
)
from meshproxy.demo.traffic import SteadyTraffic, Traffic, send_traffic

# Bounds on each rollout: 4 steps of 2 s and the promotion need about 10 s.
GOOD_ROLLOUT_S = 30.0
BAD_ROLLOUT_S = 20.0


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
            if not args.static:
                origins.append(await start_origin("v3", status=500))
                print(f"demo: {SERVICE} v3 on 127.0.0.1:{origins[2].port} (broken: answers 500)")
            outbound = port_or_any(OUTBOUND_PORT) if args.port is None else args.port
            admin = port_or_any(ADMIN_PORT) if args.admin_port is None else args.admin_port
            if args.static:
                return await run_static(args, Path(tmp), v1, v2, outbound, admin)
            apps = {origin.version: origin.port for origin in origins}
            return await run_dynamic(args, Path(tmp), apps, outbound, admin)
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
    sidecar = await start_sidecar(config, ("outbound",))
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
    args: argparse.Namespace, tmp: Path, apps: dict[str, int], outbound: int, admin: int
) -> int:
    async with dynamic_mesh(tmp, apps, outbound, admin) as mesh:
        cp = mesh.cp
        print(f"demo: control plane {cp.url} (SQLite in a temporary directory)", flush=True)
        for sidecar in mesh.sidecars:
            await wait_ready(sidecar.admin_port, sidecar)
        client = mesh.client
        print(
            f"demo: sidecars in dynamic mode: ratings {', '.join(apps)} (inbound), "
            f"{mesh.client_id} (outbound 127.0.0.1:{client.outbound_port}, "
            f"admin 127.0.0.1:{client.admin_port})",
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
        if not args.no_rollout:
            complete = await rollouts(mesh) and complete
        print_urls(client)
        for path, what in (
            ("/v1/proxies", "who runs which version"),
            (f"/v1/rollouts/{SERVICE}", "the last rollout and its decisions"),
            ("/v1/decisions", "every decision, newest first"),
        ):
            print(f"  curl -H 'Authorization: Bearer {cp.read_token}' {cp.url}{path}   # {what}")
        sys.stdout.flush()
        await _hold(args)
        return 0 if complete else 1


async def rollouts(mesh: Mesh) -> bool:
    """v2 rolled out from the 50/50 split until promoted; then v3, which fails,
    rolled out over v2 until the control plane rolls it back.  True when both
    end as they should."""
    cp, client = mesh.cp, mesh.client
    metrics = f"http://127.0.0.1:{client.admin_port}/metrics"
    async with SteadyTraffic(client.outbound_port) as traffic:
        good = await one_rollout(cp, traffic, "v1", "v2", metrics, GOOD_ROLLOUT_S)
        # After the promotion v2 is the stable version: its route alone, then v3 after it.
        version = await cp.put(f"/v1/routes/{SERVICE}", only("v2"))
        await cp.acked(mesh.client_id, version)
        print(
            f"demo: PUT /v1/routes/{SERVICE} 100% v2 -> version {version}: v2 is the stable "
            "version; now a rollout of v3, which answers 500",
            flush=True,
        )
        bad = await one_rollout(cp, traffic, "v2", "v3", metrics, BAD_ROLLOUT_S)
    print(f"demo: rollout of v2 {good}; rollout of v3 {bad}", flush=True)
    return good == "promoted" and bad == "rolled_back"


async def one_rollout(
    cp: ControlPlane,
    traffic: SteadyTraffic,
    stable: str,
    canary_subset: str,
    metrics: str,
    timeout_s: float,
) -> str:
    """Start a rollout and print it to its end; the phase it ended in."""
    spec = rollout_spec(stable, canary_subset, metrics)
    print(
        f"demo: PUT /v1/rollouts/{SERVICE} {stable} -> {canary_subset}: "
        f"+{spec['step_weight']}% every {spec['interval']} up to {spec['max_weight']}%, "
        f"success rate >= {spec['checks']['min_success_rate']:g}%, "
        f"error budget {spec['error_budget']} requests",
        flush=True,
    )
    await cp.call("PUT", f"/v1/rollouts/{SERVICE}", spec)
    try:
        steps = await follow_rollout(
            cp, SERVICE, canary_subset, traffic, frozenset({stable, canary_subset}), timeout_s,
            lambda line: print(line, flush=True),
        )  # fmt: skip
    except TimeoutError:
        print(f"demo: the rollout of {canary_subset} did not end within {timeout_s:.0f}s")
        await cp.call("DELETE", f"/v1/rollouts/{SERVICE}")
        return "unfinished"
    return steps[-1].phase


def only(subset: str) -> dict[str, object]:
    """A route table that sends all of ratings' traffic to one subset."""
    return {"rules": [{"match": [{"path": {"prefix": "/"}}], "backends": [{"subset": subset}]}]}


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
    parser.add_argument(
        "--no-rollout",
        action="store_true",
        help="dynamic mode: stop after the 90/10 and 50/50 steps, no rollouts",
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
