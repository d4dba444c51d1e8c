"""The demo's service: ``ratings`` in a given version, answering who it is in JSON.

A version started with ``status=500`` is the demo's broken release: it still
says who it is, but every answer is a server error, which is what a canary
analysis must catch.

Kept tiny on purpose (one aiohttp handler); it runs inside the demo process so
the demo needs no other program than the sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

SERVICE = "ratings"


def make_app(version: str, status: int = 200) -> web.Application:
    body = {"service": SERVICE, "version": version}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@dataclass(frozen=True, slots=True)
class RunningOrigin:
    version: str
    port: int
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_origin(
    version: str, host: str = "127.0.0.1", port: int = 0, *, status: int = 200
) -> RunningOrigin:
    runner = web.AppRunner(make_app(version, status), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    if not addresses:
        await runner.cleanup()
        raise OSError(f"the {version} origin did not bind")
    return RunningOrigin(version, int(addresses[0][1]), runner)
