"""A user filter loaded by entry point, through a running sidecar.

The example plugin (examples/ab_tagger) is made visible to the sidecar as
``pip install`` would: its source on PYTHONPATH plus a dist-info directory
declaring the ``meshproxy.filters`` entry point.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config
from tests.integration.test_policy_sidecar_config import plugin_env

pytestmark = pytest.mark.integration


async def test_a_plugin_loaded_by_entry_point_tags_request_and_response(
    origin: Origin, proxies: StartProxy, tmp_path: Path
) -> None:
    config = basic_config({"web": [origin.port]})
    config["snapshot"]["filters"] = [{"name": "ab_tagger", "config": {"percent_b": 100}}]
    proxy = await proxies(config, env=plugin_env(tmp_path))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(get("/", extra="X-User: ann\r\n"))
        await conn.close()
    assert resp.status == 200
    assert resp.header("x-ab-bucket") == "b"
    assert origin.requests[0].headers["x-ab-bucket"] == "b"
