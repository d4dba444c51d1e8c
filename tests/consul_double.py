"""A faithful double of the part of Consul's HTTP API that meshcontrol uses.

It follows Consul's documented behaviour, not our adapter's expectations:

* ``/v1/kv/<key>``: GET (base64 ``Value``, ``CreateIndex``/``ModifyIndex``,
  ``?recurse``, ``?keys``, 404 when absent, ``X-Consul-Index`` always), PUT
  (raw body, ``?cas=`` answering ``true``/``false``; ``cas=0`` creates only if
  absent), DELETE (``?cas=``, ``?recurse``).
* ``/v1/health/service/<name>`` (``?passing``) and ``/v1/catalog/services``.
* ``/v1/agent/service/register``, ``/v1/agent/service/deregister/<id>``,
  ``/v1/agent/check/pass|warn|fail/<id>`` (TTL checks start critical, as in
  Consul, unless the registration gives a ``Status``).
* ``/v1/status/leader``.
* Blocking queries on every GET above: with ``?index=N`` the answer comes at
  once when the resource's index is above N, otherwise when it changes or
  ``wait`` (Go duration, default 5m, at most 10m) elapses, and then it may
  carry the same index.

What a test can do to it that a healthy agent would not do on its own:
``reset_indices`` (a snapshot restore: every index goes backwards), ``down``
(every call answers 503, as an agent without a leader does) and ``stop`` /
``start`` on the same port (connection refused in between).  ``token`` makes
it demand ``X-Consul-Token`` (403 otherwise, as with ACLs on).

It must not be imported by ``control/``: it is a test peer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

NODE = {"ID": "0000-double", "Node": "double", "Address": "127.0.0.1", "Datacenter": "dc1"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


def go_duration(text: str) -> float:
    """Go's duration syntax (``1m30s``, ``250ms``); a bare number is seconds,
    as Consul accepts."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class _Entry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int


@dataclass
class _Service:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    check_status: str | None  # None: no check registered
    index: int


@dataclass
class ConsulState:
    index: int = 1
    kv: dict[str, _Entry] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    kv_index: int = 1
    services: dict[str, _Service] = field(default_factory=dict)
    service_index: dict[str, int] = field(default_factory=dict)  # by name, kept after removal
    catalog_index: int = 1

    def bump(self) -> int:
        self.index += 1
        return self.index


class ConsulDouble:
    def __init__(self, token: str | None = None) -> None:
        self.state = ConsulState()
        self.token = token
        self.down = False
        self.requests: list[str] = []  # "METHOD path?query", for tests that count calls
        self._changed = asyncio.Event()
        self._server: TestServer | None = None
        self._stopping = False
        self.port = 0

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Serve on a free loopback port, or on the same one again after ``stop``."""
        self._server = TestServer(self.app(), host="127.0.0.1", port=self.port or None)
        await self._server.start_server()
        self.port = self._server.port or 0

    async def stop(self) -> None:
        """Close the port; blocking queries in flight answer first, as an
        agent that leaves does, so no client waits out its ``wait``."""
        if self._server is not None:
            self._stopping = True
            self._wake()
            await self._server.close()
            self._server = None
            self._stopping = False

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_route("*", "/v1/kv/{key:.*}", self._kv)
        app.router.add_get("/v1/health/service/{name}", self._health)
        app.router.add_get("/v1/catalog/services", self._catalog_services)
        app.router.add_put("/v1/agent/service/register", self._register)
        app.router.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        app.router.add_put("/v1/agent/check/{status:pass|warn|fail}/{id:.+}", self._check)
        app.router.add_get("/v1/status/leader", self._leader)
        return app

    # -- what tests do to it -------------------------------------------------

    def reset_indices(self, to: int = 1) -> None:
        """Every index drops to at most ``to``: what a restore from snapshot
        or a new cluster looks like to a client holding an old index."""
        s = self.state
        s.index = to
        for entry in s.kv.values():
            entry.create_index = min(entry.create_index, to)
            entry.modify_index = min(entry.modify_index, to)
        s.tombstones = {k: min(v, to) for k, v in s.tombstones.items()}
        s.kv_index = min(s.kv_index, to)
        for service in s.services.values():
            service.index = min(service.index, to)
        s.service_index = {k: min(v, to) for k, v in s.service_index.items()}
        s.catalog_index = min(s.catalog_index, to)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- plumbing ------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        if self.down:
            return web.Response(status=503, text="No cluster leader")
        if self.token is not None:
            given = request.headers.get("X-Consul-Token") or request.query.get("token")
            bearer = request.headers.get("Authorization", "")
            if bearer.startswith("Bearer "):
                given = bearer[7:]
            if given != self.token:
                return web.Response(status=403, text="ACL not found")
        try:
            response: web.StreamResponse = await handler(request)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        return response

    async def _block(self, request: web.Request, current: Any) -> int:
        """Wait as a blocking query does; return the index to answer with."""
        index_text = request.query.get("index")
        if index_text is None:
            return int(current())
        if not index_text.isdigit():
            raise ValueError(f"invalid index {index_text!r}")
        index = int(index_text)
        wait = min(go_duration(request.query.get("wait", "5m")), MAX_WAIT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            now_index = int(current())
            # Only a newer index ends the wait: a client whose index is ahead
            # (the resource's went backwards) waits it out like any other and
            # then sees the smaller index, which it must take as a reset.
            if index == 0 or now_index > index:
                return now_index
            remaining = deadline - loop.time()
            if remaining <= 0 or self.down or self._stopping:
                return now_index
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _json(body: object, index: int, status: int = 200) -> web.Response:
        response = web.json_response(body, status=status)
        response.headers["X-Consul-Index"] = str(index)
        response.headers["X-Consul-KnownLeader"] = "true"
        return response

    # -- KV ------------------------------------------------------------------

    def _kv_index(self, key: str, prefix: bool) -> int:
        s = self.state
        if prefix:
            found = [e.modify_index for k, e in s.kv.items() if k.startswith(key)]
            found += [i for k, i in s.tombstones.items() if k.startswith(key)]
        else:
            found = [s.kv[key].modify_index] if key in s.kv else []
            found += [s.tombstones[key]] if key in s.tombstones else []
        return max(found) if found else max(s.kv_index, 1)

    async def _kv(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if request.method == "GET":
            return await self._kv_get(request, key)
        if request.method == "PUT":
            return await self._kv_put(request, key)
        if request.method == "DELETE":
            return self._kv_delete(request, key)
        return web.Response(status=405)

    async def _kv_get(self, request: web.Request, key: str) -> web.Response:
        prefix = "recurse" in request.query or "keys" in request.query
        index = await self._block(request, lambda: self._kv_index(key, prefix))
        s = self.state
        keys = sorted(k for k in s.kv if (k.startswith(key) if prefix else k == key))
        if not keys:
            return self._not_found(index)
        if "keys" in request.query:
            return self._json(keys, index)
        return self._json([self._kv_view(k) for k in keys], index)

    def _not_found(self, index: int) -> web.Response:
        response = web.Response(status=404)
        response.headers["X-Consul-Index"] = str(index)
        return response

    def _kv_view(self, key: str) -> dict[str, object]:
        e = self.state.kv[key]
        return {
            "Key": key,
            "CreateIndex": e.create_index,
            "ModifyIndex": e.modify_index,
            "LockIndex": 0,
            "Flags": e.flags,
            "Value": base64.b64encode(e.value).decode() if e.value else None,
            "Session": "",
        }

    async def _kv_put(self, request: web.Request, key: str) -> web.Response:
        if not key:
            raise ValueError("Missing key name")
        value = await request.read()
        if len(value) > 512 * 1024:
            return web.Response(status=413, text="Value exceeds 524288 byte limit")
        s = self.state
        cas = request.query.get("cas")
        if cas is not None:
            expected = int(cas)
            current = s.kv[key].modify_index if key in s.kv else 0
            if current != expected:
                return web.json_response(False)
        index = s.bump()
        old = s.kv.get(key)
        flags = int(request.query.get("flags", "0"))
        s.kv[key] = _Entry(value, flags, old.create_index if old else index, index)
        s.tombstones.pop(key, None)
        s.kv_index = index
        self._wake()
        return web.json_response(True)

    def _kv_delete(self, request: web.Request, key: str) -> web.Response:
        s = self.state
        recurse = "recurse" in request.query
        cas = request.query.get("cas")
        if cas is not None and not recurse:
            current = s.kv[key].modify_index if key in s.kv else 0
            if current != int(cas):
                return web.json_response(False)
        doomed = [k for k in s.kv if (k.startswith(key) if recurse else k == key)]
        index = s.bump()
        for k in doomed:
            del s.kv[k]
            s.tombstones[k] = index
        s.kv_index = index
        self._wake()
        return web.json_response(True)

    # -- catalog and health --------------------------------------------------

    def _health_index(self, name: str) -> int:
        return self.state.service_index.get(name, max(self.state.catalog_index, 1))

    async def _health(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        index = await self._block(request, lambda: self._health_index(name))
        passing_only = "passing" in request.query
        out = []
        for service in sorted(self.state.services.values(), key=lambda v: v.id):
            if service.name != name:
                continue
            checks = [
                {
                    "Node": NODE["Node"],
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "ServiceID": "",
                    "ServiceName": "",
                }
            ]
            if service.check_status is not None:
                checks.append(
                    {
                        "Node": NODE["Node"],
                        "CheckID": f"service:{service.id}",
                        "Name": f"Service '{service.name}' check",
                        "Status": service.check_status,
                        "ServiceID": service.id,
                        "ServiceName": service.name,
                    }
                )
            if passing_only and any(c["Status"] != "passing" for c in checks):
                continue
            out.append(
                {
                    "Node": dict(NODE),
                    "Service": {
                        "ID": service.id,
                        "Service": service.name,
                        "Tags": service.tags,
                        "Address": service.address,
                        "Port": service.port,
                        "Meta": service.meta,
                        "Weights": service.weights,
                    },
                    "Checks": checks,
                }
            )
        return self._json(out, index)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        index = await self._block(request, lambda: max(self.state.catalog_index, 1))
        names: dict[str, list[str]] = {"consul": []}
        for service in self.state.services.values():
            names.setdefault(service.name, [])
            names[service.name] = sorted(set(names[service.name]) | set(service.tags))
        return self._json(names, index)

    def _service_changed(self, name: str, index: int) -> None:
        self.state.service_index[name] = index
        self.state.catalog_index = index
        self._wake()

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise ValueError(f"Request decode failed: {exc}") from None
        if not isinstance(body, dict) or not body.get("Name"):
            raise ValueError("Missing service name")
        check = body.get("Check") or (body.get("Checks") or [None])[0]
        status: str | None = None
        if isinstance(check, dict):
            status = check.get("Status", "critical")
        weights = body.get("Weights") or {"Passing": 1, "Warning": 1}
        s = self.state
        index = s.bump()
        service = _Service(
            id=body.get("ID") or body["Name"],
            name=body["Name"],
            address=body.get("Address", ""),
            port=int(body.get("Port", 0)),
            tags=list(body.get("Tags") or []),
            meta=dict(body.get("Meta") or {}),
            weights={"Passing": int(weights.get("Passing", 1)), "Warning": 1},
            check_status=status,
            index=index,
        )
        old = s.services.get(service.id)
        s.services[service.id] = service
        if old is not None and old.name != service.name:
            self._service_changed(old.name, index)
        self._service_changed(service.name, index)
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        service = self.state.services.pop(request.match_info["id"], None)
        if service is None:
            return web.Response(status=404, text="Unknown service ID")
        self._service_changed(service.name, self.state.bump())
        return web.Response(status=200)

    async def _check(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[
            request.match_info["status"]
        ]
        found = next(
            (v for v in self.state.services.values() if f"service:{v.id}" == check_id), None
        )
        if found is None or found.check_status is None:
            return web.Response(status=404, text=f'Unknown check ID "{check_id}"')
        if found.check_status != status:
            found.check_status = status
            found.index = self.state.bump()
            self._service_changed(found.name, found.index)
        return web.Response(status=200)

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")


async def eventually(check: Any, within: float = 5.0, step: float = 0.02) -> None:
    """Poll ``check`` (a function, or a coroutine function) until it is true;
    fail after ``within`` seconds.  For state that a background task updates."""
    for _ in range(max(1, int(within / step))):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(step)
    raise AssertionError(f"not true after {within}s: {getattr(check, '__name__', check)}")
