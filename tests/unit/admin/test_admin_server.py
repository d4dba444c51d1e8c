"""The admin server's routes, against a real aiohttp server on a loopback port."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from meshproxy.admin import REDACTED, AdminServer, redact, start_admin
from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics


@dataclass
class FakeProxy:
    ready: bool = False
    metrics: ProxyMetrics = field(default_factory=lambda: ProxyMetrics(services=["ratings"]))
    config: dict[str, object] = field(default_factory=dict)

    def config_dump(self) -> dict[str, object]:
        return self.config

    def clusters(self) -> dict[str, object]:
        return {}


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> FakeProxy:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return FakeProxy()


@pytest.fixture
async def admin(proxy: FakeProxy) -> AsyncIterator[AdminServer]:
    server = await start_admin(proxy, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def get(server: AdminServer, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}") as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_bound_port_is_reported_when_zero_was_asked(admin: AdminServer) -> None:
    assert admin.port > 0


async def test_ready_follows_the_proxy_state(admin: AdminServer, proxy: FakeProxy) -> None:
    assert (await get(admin, "/ready"))[::2] == (503, "not ready\n")
    proxy.ready = True
    assert (await get(admin, "/ready"))[::2] == (200, "ready\n")
    proxy.ready = False
    assert (await get(admin, "/ready"))[0] == 503


async def test_metrics_body_parses_and_shows_recorded_requests(
    admin: AdminServer, proxy: FakeProxy
) -> None:
    proxy.metrics.request_done("outbound", "ratings", 200, 0.004)
    proxy.metrics.request_done("outbound", "ratings", 200, 0.004)
    status, content_type, body = await get(admin, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    (sample,) = families["meshproxy_requests"].samples
    assert sample.labels["destination_service"] == "ratings"
    assert sample.labels["response_code"] == "200"
    assert sample.value == 2
    assert families["meshproxy_request_duration_seconds"].type == "histogram"
    assert "meshproxy_info" in families


async def test_metrics_are_rendered_off_the_event_loop_thread(
    admin: AdminServer, proxy: FakeProxy
) -> None:
    threads: list[int] = []
    render = proxy.metrics.render

    def spy() -> tuple[bytes, str]:
        threads.append(threading.get_ident())
        return render()

    proxy.metrics.render = spy  # type: ignore[method-assign]
    assert (await get(admin, "/metrics"))[0] == 200
    assert threads and threads[0] != threading.get_ident()


async def test_config_dump_is_pretty_json_without_secrets(
    admin: AdminServer, proxy: FakeProxy
) -> None:
    proxy.config = {
        "node": {"id": "reviews-1", "service": "reviews"},
        "control_plane": {"url": "http://127.0.0.1:15010", "token": "s3cret"},
        "tls": [{"cert": "/etc/mesh/cert.pem", "private_key": "-----BEGIN"}],
        "api": {"password": SecretStr("hunter2"), "password_hint": "ask ops"},
    }
    status, content_type, body = await get(admin, "/config_dump")
    assert status == 200
    assert content_type.startswith("application/json")
    assert body.startswith("{\n  ")
    assert json.loads(body) == {
        "node": {"id": "reviews-1", "service": "reviews"},
        "control_plane": {"url": "http://127.0.0.1:15010", "token": REDACTED},
        "tls": [{"cert": "/etc/mesh/cert.pem", "private_key": REDACTED}],
        "api": {"password": REDACTED, "password_hint": "ask ops"},
    }
    assert "s3cret" not in body and "hunter2" not in body and "BEGIN" not in body


def test_redact_hides_secret_values_under_any_key() -> None:
    assert redact({"upstream": {"Authorization": "Bearer x", "k": SecretStr("y")}}) == {
        "upstream": {"Authorization": REDACTED, "k": REDACTED}
    }
    assert redact(("a", 1, None)) == ["a", 1, None]


async def test_index_lists_the_routes(admin: AdminServer) -> None:
    status, _, body = await get(admin, "/")
    assert status == 200
    for route in ("/ready", "/metrics", "/stats", "/config_dump", "/logging"):
        assert route in body


async def test_unknown_path_is_404(admin: AdminServer) -> None:
    assert (await get(admin, "/statz"))[0] == 404


async def test_stats_are_json_counters_without_histogram_buckets(
    admin: AdminServer, proxy: FakeProxy
) -> None:
    proxy.metrics.request_done("outbound", "ratings", 503, 0.004)
    status, content_type, body = await get(admin, "/stats")
    assert status == 200
    assert content_type.startswith("application/json")
    stats = json.loads(body)
    (row,) = stats["meshproxy_requests_total"]
    assert row["value"] == 1
    assert row["labels"]["response_code"] == "503"
    assert stats["meshproxy_request_duration_seconds_count"][0]["value"] == 1
    assert not any(name.endswith("_bucket") for name in stats)


async def post(server: AdminServer, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}{path}") as resp,
    ):
        return resp.status, await resp.text()


@pytest.fixture
def meshproxy_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("meshproxy")
    level = logger.level
    yield logger
    logger.setLevel(level)


async def test_logging_sets_the_meshproxy_log_level(
    admin: AdminServer, meshproxy_logger: logging.Logger
) -> None:
    assert await post(admin, "/logging?level=debug") == (200, "level=debug\n")
    assert meshproxy_logger.level == logging.DEBUG
    assert (await post(admin, "/logging?level=WARNING"))[0] == 200
    assert meshproxy_logger.level == logging.WARNING


@pytest.mark.parametrize("query", ["", "?level=", "?level=verbose", "?level=critical"])
async def test_logging_refuses_a_missing_or_unknown_level(
    admin: AdminServer, meshproxy_logger: logging.Logger, query: str
) -> None:
    meshproxy_logger.setLevel(logging.INFO)
    status, body = await post(admin, "/logging" + query)
    assert status == 400
    assert "debug|info|warning|error" in body
    assert meshproxy_logger.level == logging.INFO


async def test_logging_needs_post(admin: AdminServer) -> None:
    assert (await get(admin, "/logging?level=debug"))[0] == 405


async def test_close_stops_listening(proxy: FakeProxy) -> None:
    server = await start_admin(proxy, "127.0.0.1", 0)
    assert (await get(server, "/ready"))[0] == 503
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(server, "/ready")


async def test_port_in_use_raises_and_the_first_server_keeps_serving(
    admin: AdminServer, proxy: FakeProxy
) -> None:
    with pytest.raises(OSError):
        await start_admin(proxy, "127.0.0.1", admin.port)
    assert (await get(admin, "/ready"))[0] == 503
