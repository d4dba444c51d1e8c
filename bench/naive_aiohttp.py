"""The naive reverse proxy of the benchmark: what most people would write with aiohttp.

One shared ``ClientSession`` (keep-alive to the origin), a catch-all handler
that copies method, path, headers and body to the upstream and the answer
back.  It runs on uvloop so that the comparison with meshproxy is about the
proxy code, not the event loop.  It must stay plain: it is the baseline.

Run: ``python -m bench.naive_aiohttp --port N --upstream http://127.0.0.1:P``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    body = await request.read()
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.path_qs,
        headers=headers,
        data=body or None,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        payload = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        return web.Response(status=upstream.status, headers=out, body=payload)


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_aiohttp", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: None,
        handle_signals=True,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
