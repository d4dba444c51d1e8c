"""The demo's traffic through the client sidecar, and its account of who answered.

``send_traffic`` sends a fixed number of requests as fast as a few keep-alive
connections allow (the split steps); ``SteadyTraffic`` keeps a slow, steady
stream running in the background while a rollout moves the weights, and hands
over what it counted since the last look.  It only talks HTTP to the sidecar's
outbound port, as an application would; it decides nothing about the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from meshproxy.demo.origin import SERVICE

BASE_VERSIONS = frozenset({"v1", "v2"})


@dataclass(frozen=True, slots=True)
class Traffic:
    versions: Counter[str]
    errors: Counter[str]
    seconds: float

    @property
    def answered(self) -> int:
        return sum(self.versions.values())

    def shares(self, always: frozenset[str] = BASE_VERSIONS) -> str:
        """``v1 90.0% (1800), v2 10.0% (199); errors 1 {...}``, every version in
        ``always`` shown even when nothing came from it."""
        total = self.answered or 1
        shares = ", ".join(
            f"{v} {self.versions[v] / total:.1%} ({self.versions[v]})"
            for v in sorted(self.versions.keys() | always)
        )
        errors = sum(self.errors.values())
        detail = f" {dict(self.errors)}" if errors else ""
        return f"{shares}; errors {errors}{detail}"

    def split_line(self) -> str:
        return f"split observed: {self.shares()}"


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/ratings/1"


async def _one_request(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    """One GET: (True, the version that answered) or (False, what went wrong)."""
    try:
        async with session.get(url, headers={"Host": SERVICE}) as response:
            if response.status != 200:
                return False, await _failure(response)
            body = await response.json()
            return True, str(body.get("version"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return False, type(exc).__name__


async def _failure(response: aiohttp.ClientResponse) -> str:
    """``status 500 from v3`` when a version answered the error, else ``status 502``."""
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    if isinstance(body, dict) and "version" in body:
        return f"status {response.status} from {body['version']}"
    return f"status {response.status}"


async def send_traffic(port: int, requests: int, connections: int) -> Traffic:
    """``requests`` GETs with ``Host: ratings`` over ``connections`` keep-alive
    connections; counts which version answered."""
    versions: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    url = _url(port)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            ok, what = await _one_request(session, url)
            (versions if ok else errors)[what] += 1

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        share, extra = divmod(requests, connections)
        await asyncio.gather(
            *(worker(session, share + (1 if i < extra else 0)) for i in range(connections))
        )
    return Traffic(versions, errors, time.perf_counter() - start)


class SteadyTraffic:
    """Background requests at about ``connections / pause_s`` per second until the
    ``async with`` block ends; ``take()`` returns the counts since the last take."""

    def __init__(self, port: int, connections: int = 2, pause_s: float = 0.01) -> None:
        self.url = _url(port)
        self.connections = connections
        self.pause_s = pause_s
        self._versions: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._since = time.perf_counter()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def counted(self) -> int:
        """Answers and errors since the last take."""
        return sum(self._versions.values()) + sum(self._errors.values())

    def take(self) -> Traffic:
        now = time.perf_counter()
        taken = Traffic(self._versions, self._errors, now - self._since)
        self._versions, self._errors, self._since = Counter(), Counter(), now
        return taken

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            ok, what = await _one_request(session, self.url)
            # Counted after the answer: a take() meanwhile swapped the counters.
            (self._versions if ok else self._errors)[what] += 1
            await asyncio.sleep(self.pause_s)

    async def __aenter__(self) -> SteadyTraffic:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=5)
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._worker(self._session)) for _ in range(self.connections)
        ]
        self.take()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()


__all__ = ["SteadyTraffic", "Traffic", "send_traffic"]
