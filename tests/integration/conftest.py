"""Fixtures of the proxy integration tests: an origin in the test's loop and a
factory starting real proxy processes (every one stopped at the end)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.origin import Origin
from tests.integration.proxyproc import ProxyProcess, start_proxy

StartProxy = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = await Origin().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[StartProxy]:
    started: list[ProxyProcess] = []

    async def start(config: dict[str, Any], *args: str, **kwargs: Any) -> ProxyProcess:
        proxy = await start_proxy(tmp_path, config, *args, **kwargs)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            await proxy.stop()
