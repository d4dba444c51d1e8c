"""``meshcontrol run [--port N] [--host H] [--data-dir D]``: start the control plane.
``meshcontrol agent --control-plane URL --node ID --cpu 2000m --memory 2Gi [--zone Z]``:
run a node agent (``control/agent/``); its token comes from ``--token`` or
``MESHCONTROL_AGENT_TOKEN`` (a write token).

Prints ``listening address=... port=NNNN`` to stderr once it accepts
connections (with ``--port 0`` that is how a caller learns the port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from control.app import build_app, open_store
from control.settings import ControlSettings
from control.store.base import StoreError


async def serve(settings: ControlSettings) -> None:
    store = open_store(settings)
    try:
        app = build_app(settings, store)
    except BaseException:
        store.close()
        raise
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2] if sockets else (settings.host, settings.port)
        print(f"listening address={host} port={port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


async def run_agent(args: argparse.Namespace) -> None:
    # Imported here: the control plane itself does not need the agent's modules.
    from aiohttp import ClientSession

    from control.agent.agent import Agent
    from control.agent.channel import Channel
    from control.nodes import NodeRegistration

    token = args.token or os.environ.get("MESHCONTROL_AGENT_TOKEN", "")
    if not token:
        raise ValueError("give --token or set MESHCONTROL_AGENT_TOKEN (a write token)")
    labels = dict(item.split("=", 1) for item in args.label)
    registration = NodeRegistration(
        id=args.node, cpu=args.cpu, memory=args.memory, zone=args.zone, labels=labels,
        address=args.address,
    )  # fmt: skip
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix=f"meshcontrol-agent-{args.node}-"))
    async with ClientSession() as session:
        agent = Agent(Channel(session, args.control_plane, token), registration, workdir)
        print(
            f"agent node={args.node} limits={agent.limits.mode} workdir={workdir}",
            file=sys.stderr,
            flush=True,
        )
        task = asyncio.create_task(agent.run(session))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _label(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshcontrol", description="the meshproxy control plane")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the control-plane API")
    run.add_argument("--port", type=int, help="overrides MESHCONTROL_PORT; 0 picks a free port")
    run.add_argument("--host", help="overrides MESHCONTROL_HOST")
    run.add_argument("--data-dir", type=Path, help="overrides MESHCONTROL_DATA_DIR")
    agent = commands.add_parser("agent", help="run a node agent (the embedded executor)")
    agent.add_argument("--control-plane", required=True, help="e.g. http://127.0.0.1:15010")
    agent.add_argument("--node", required=True, help="this node's id")
    agent.add_argument("--cpu", required=True, help="allocatable CPU, e.g. 2000m")
    agent.add_argument("--memory", required=True, help="allocatable memory, e.g. 2Gi")
    agent.add_argument("--zone")
    agent.add_argument("--label", action="append", default=[], type=_label, help="KEY=VALUE")
    agent.add_argument("--address", default="127.0.0.1", help="where peers reach instances")
    agent.add_argument("--token", help="overrides MESHCONTROL_AGENT_TOKEN")
    agent.add_argument("--work-dir", type=Path, help="sidecar configs and app logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.command == "agent":
        try:
            asyncio.run(run_agent(args))
        except (ValidationError, ValueError, OSError) as exc:
            print(f"meshcontrol agent: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        return 0
    overrides = {
        k: v
        for k, v in {"port": args.port, "host": args.host, "data_dir": args.data_dir}.items()
        if v is not None
    }
    try:
        settings = ControlSettings(**overrides)
        asyncio.run(serve(settings))
    except (ValidationError, StoreError, ValueError, OSError) as exc:
        print(f"meshcontrol: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
