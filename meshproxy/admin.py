"""The sidecar's admin HTTP server (aiohttp): readiness, metrics, stats, config dump.

It runs in the proxy's own event loop, so nothing here may block it: the
metrics exposition and the stats (which can read many mmap files in
multi-process mode) are rendered in the default thread pool, and the handlers
only read state.  It is meant for loopback or a cluster-internal address; it
has no auth, so the only route that changes anything is the log level.

Routes: ``GET /`` (index), ``/ready``, ``/metrics``, ``/stats`` (the metric
samples as JSON, no histogram buckets), ``/config_dump``, ``/clusters``
(upstream endpoints and breakers as JSON), ``/certs`` (the mTLS identity,
serial and expiry of the certificate in use, and the trusted roots), and
``POST /logging?level=debug|info|warning|error`` (the ``meshproxy`` logger's
level; a missing or unknown level is a 400); any other path is 404.
``/config_dump`` passes through ``redact`` so that secrets (keys, tokens,
passwords, pydantic ``Secret*`` values) never leave the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web
from pydantic import SecretBytes, SecretStr

from meshproxy.observe.metrics import ProxyMetrics

__all__ = ["REDACTED", "AdminServer", "AdminState", "redact", "start_admin"]

REDACTED = "<redacted>"
# Keys whose values are secret wherever they appear in a config tree (compared lower-case).
SECRET_KEYS = frozenset(
    {
        "admin_token",
        "authorization",
        "password",
        "private_key",
        "secret",
        "token",
    }
)

_INDEX = (
    "meshproxy admin\n"
    "  GET /ready         200 when the proxy takes traffic, else 503\n"
    "  GET /metrics       Prometheus exposition\n"
    "  GET /stats         the metric samples as JSON (histograms: count and sum)\n"
    "  GET /config_dump   the config in force, as JSON (secrets redacted)\n"
    "  GET /clusters      upstream clusters: endpoints, health, ejections, breakers\n"
    "  GET /certs         mTLS identity, serial and expiry of the certificate in use\n"
    "  POST /logging?level=debug|info|warning|error   set the log level\n"
)
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class AdminState(Protocol):
    """What the admin server reads from the running proxy."""

    @property
    def ready(self) -> bool: ...

    @property
    def metrics(self) -> ProxyMetrics: ...

    def config_dump(self) -> dict[str, object]: ...

    def clusters(self) -> dict[str, object]: ...

    def certs(self) -> dict[str, object]: ...


def redact(value: object) -> object:
    """A copy of ``value`` fit to show: secret keys and ``Secret*`` values replaced."""
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if str(k).lower() in SECRET_KEYS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


class AdminServer:
    """A started admin server; ``port`` is the bound one (useful when 0 was asked)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


_STATE: web.AppKey[AdminState] = web.AppKey("state", AdminState)


async def start_admin(state: AdminState, host: str, port: int) -> AdminServer:
    """Serve the admin routes on ``host:port`` in the running loop."""
    app = web.Application()
    app[_STATE] = state
    app.router.add_get("/", _index)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/config_dump", _config_dump)
    app.router.add_get("/clusters", _clusters)
    app.router.add_get("/certs", _certs)
    app.router.add_post("/logging", _logging)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return AdminServer(runner, int(bound))


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=_INDEX)


async def _ready(request: web.Request) -> web.Response:
    if request.app[_STATE].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    metrics = state.metrics
    metrics.set_ready(state.ready)
    body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _stats(request: web.Request) -> web.Response:
    metrics = request.app[_STATE].metrics
    stats = await asyncio.get_running_loop().run_in_executor(None, metrics.stats)
    text = json.dumps(stats, indent=2, sort_keys=True) + "\n"
    return web.Response(text=text, content_type="application/json")


async def _logging(request: web.Request) -> web.Response:
    name = request.query.get("level", "").lower()
    level = LOG_LEVELS.get(name)
    if level is None:
        choices = "|".join(LOG_LEVELS)
        return web.Response(status=400, text=f"level must be one of {choices}\n")
    logging.getLogger("meshproxy").setLevel(level)
    return web.Response(text=f"level={name}\n")


async def _clusters(request: web.Request) -> web.Response:
    text = json.dumps(request.app[_STATE].clusters(), indent=2, sort_keys=True) + "\n"
    return web.Response(text=text, content_type="application/json")


async def _certs(request: web.Request) -> web.Response:
    text = json.dumps(request.app[_STATE].certs(), indent=2, sort_keys=True) + "\n"
    return web.Response(text=text, content_type="application/json")


async def _config_dump(request: web.Request) -> web.Response:
    dump = redact(request.app[_STATE].config_dump())
    text = json.dumps(dump, indent=2, sort_keys=True, default=str) + "\n"
    return web.Response(text=text, content_type="application/json")
