"""The aiohttp application: routes from ``OPERATIONS``, the error mapping, and
the registry loop (TTL expiry, HTTP health checks) running beside it.

What a handler raises becomes a status here, so no input can crash the
process: 400 not JSON, 401/403 auth, 404 unknown, 409 version conflict (a
concurrent writer on a shared store), 422 invalid with field paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from control.api.agents import install_agents
from control.api.alerts import install_alerts
from control.api.auth import AuthError, Tokens
from control.api.certs import install_ca
from control.api.models import ErrorBody, Problem
from control.api.openapi import OPENAPI_PATH, openapi_document
from control.api.operation import BadRequest, Handler, Operation
from control.api.rollouts import install_rollouts
from control.api.routes import OPERATIONS
from control.registry.consul import CatalogRegistry, CatalogWatcher
from control.registry.local import Instance
from control.service import ControlPlane, NotFound
from control.settings import ControlSettings
from control.state import StateError
from control.store.base import Store, StoreError, VersionConflict
from control.store.consul import ConsulAddress, ConsulStore, follow_replicas
from control.store.sqlite import SQLiteStore

log = logging.getLogger("meshcontrol")

CONTROL: web.AppKey[ControlPlane] = web.AppKey("control", ControlPlane)
TOKENS: web.AppKey[Tokens] = web.AppKey("tokens", Tokens)
OPENAPI_KEY: web.AppKey[dict[str, object]] = web.AppKey("openapi", dict)
WRITE_TRIES = 4


def _error(status: int, error: str, problems: list[tuple[str, str]] | None = None) -> web.Response:
    found = problems or []
    body = ErrorBody(error=error, problems=[Problem(field=f, message=msg) for f, msg in found])
    response = web.json_response(body.model_dump(mode="json"), status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="meshcontrol"'
    return response


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    handler: Handler = op.handler

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            who = request.app[TOKENS].authorize(request.headers.get("Authorization"), op.scope)
            for _ in range(WRITE_TRIES - 1):
                # A conflict means another replica committed first; the control
                # plane has caught up with it, so the same request is rebuilt
                # on the new state (the body is cached by aiohttp).
                with contextlib.suppress(VersionConflict):
                    return await handler(request, request.app[CONTROL], who)
            return await handler(request, request.app[CONTROL], who)
        except AuthError as exc:
            return _error(exc.status, exc.reason)
        except BadRequest as exc:
            return _error(400, str(exc))
        except StateError as exc:
            return _error(422, "validation failed", exc.problems)
        except NotFound as exc:
            return _error(404, str(exc))
        except VersionConflict as exc:
            return _error(409, f"concurrent change: {exc}")
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            return _error(503, f"the store is unavailable: {exc}")

    return handle


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


class _ControlMetrics:
    """Scrape-time view of the push book: version, proxies, refusals (NACKs)."""

    def __init__(self, cp: ControlPlane) -> None:
        self._cp = cp

    def collect(self) -> Iterator[GaugeMetricFamily]:
        records = list(self._cp.book.records.values())
        yield GaugeMetricFamily(
            "meshcontrol_config_version", "Global config version.", value=self._cp.version
        )
        proxies = GaugeMetricFamily(
            "meshcontrol_proxies",
            "Proxies known, by whether a long-poll is open.",
            labels=["state"],
        )
        watching = sum(1 for r in records if r.watching > 0)
        proxies.add_metric(["watching"], watching)
        proxies.add_metric(["idle"], len(records) - watching)
        yield proxies
        yield GaugeMetricFamily(
            "meshcontrol_proxies_refusing",
            "Proxies whose last answer was a NACK (they refused the snapshot sent).",
            value=sum(1 for r in records if r.last_error is not None),
        )


async def _metrics(request: web.Request) -> web.Response:
    registry = CollectorRegistry()
    registry.register(_ControlMetrics(request.app[CONTROL]))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _check(session: ClientSession, cp: ControlPlane, instance: Instance) -> None:
    check = instance.spec.check
    assert check is not None
    host = instance.spec.address
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{instance.spec.port}{check.path}"
    try:
        async with session.get(url, timeout=ClientTimeout(total=check.timeout)) as response:
            ok = 200 <= response.status < 400
    except (TimeoutError, OSError, ValueError) as exc:
        log.debug("check of %s failed: %r", instance.id, exc)
        ok = False
    except Exception as exc:  # an odd reply must not stop the registry loop
        log.warning("check of %s failed: %r", instance.id, exc)
        ok = False
    await cp.check_result(instance.id, ok)


async def registry_loop(cp: ControlPlane, tick: float) -> None:
    """Expire lapsed TTLs and run due HTTP checks, every ``tick`` seconds."""
    running: set[asyncio.Task[None]] = set()
    async with ClientSession() as session:
        try:
            while True:
                try:
                    await cp.expire()
                    for instance in cp.registry.due_checks(cp.monotonic()):
                        task = asyncio.create_task(_check(session, cp, instance))
                        running.add(task)
                        task.add_done_callback(running.discard)
                except StoreError as exc:
                    log.error("registry update not stored: %s", exc)
                await asyncio.sleep(tick)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


def consul_address(settings: ControlSettings) -> ConsulAddress:
    return ConsulAddress.parse(settings.consul_http_addr, settings.consul_http_token or None)


async def _catalog_changed(cp: ControlPlane, services: list[str]) -> None:
    for _ in range(WRITE_TRIES):
        with contextlib.suppress(VersionConflict):
            await cp.catalog_changed(services)
            return
    log.warning("catalog change of %s not recorded: the store kept moving", services)


def open_store(settings: ControlSettings) -> Store:
    if settings.store == "consul":
        return ConsulStore(consul_address(settings), settings.consul_prefix)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(settings.data_dir / "meshcontrol.db")


def build_app(settings: ControlSettings, store: Store) -> web.Application:
    if not settings.admin_token:
        raise ValueError("MESHCONTROL_ADMIN_TOKEN must be set: writes need a bearer token")
    app = web.Application(client_max_size=4 * 1024 * 1024)
    registry = CatalogRegistry() if settings.registry == "consul" else None
    cp = ControlPlane(store, registry=registry)
    app[CONTROL] = cp
    app[TOKENS] = Tokens(settings.admin_token, settings.read_token or None)
    app[OPENAPI_KEY] = openapi_document()
    install_ca(app, settings.data_dir)
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, _wrap(op))
    app.router.add_get(OPENAPI_PATH, _openapi)
    app.router.add_get("/metrics", _metrics)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await cp.start()
        tasks = [asyncio.create_task(registry_loop(cp, settings.tick))]
        if isinstance(store, ConsulStore):
            tasks.append(asyncio.create_task(follow_replicas(store, cp.refresh)))
        if isinstance(registry, CatalogRegistry):
            watcher = CatalogWatcher(
                consul_address(settings).client,
                registry,
                lambda services: _catalog_changed(cp, services),
            )
            tasks.append(asyncio.create_task(watcher.run()))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await cp.close()

    async def release_watches(app: web.Application) -> None:
        cp.stop_watches()

    app.on_shutdown.append(release_watches)
    app.cleanup_ctx.append(lifecycle)
    install_rollouts(app, cp, settings.tick)
    install_alerts(app)
    install_agents(app, cp, max(settings.tick, 0.5), settings.restart_grace)
    return app
