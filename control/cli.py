"""``meshcontrol run [--port N] [--host H] [--data-dir D]``: start the control plane.

Prints ``listening address=... port=NNNN`` to stderr once it accepts
connections (with ``--port 0`` that is how a caller learns the port).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshcontrol", description="the meshproxy control plane")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the control-plane API")
    run.add_argument("--port", type=int, help="overrides MESHCONTROL_PORT; 0 picks a free port")
    run.add_argument("--host", help="overrides MESHCONTROL_HOST")
    run.add_argument("--data-dir", type=Path, help="overrides MESHCONTROL_DATA_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
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
