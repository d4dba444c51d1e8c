"""A real Prometheus scrapes a live sidecar under traffic; every dashboard panel
and every shipped rule is evaluated through Prometheus's HTTP API.

The Prometheus config is the shipped ``config/prometheus/prometheus.yml`` with
the sidecar's admin port as its target, a 1 s scrape interval and the shipped
rules.  The traffic: successes, an origin that resets (502), an unknown host
(local 404), a service whose only endpoint refuses connections (503), bodies
of several sizes, and concurrent slow requests over a breaker of one (503 UO).
Every panel of every dashboard must then answer with data, except those whose
traffic this test does not make (``NOT_GENERATED``), and every target and rule
expression must evaluate without error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
GRAFANA = REPO / "config" / "grafana"
PROMETHEUS = REPO / "config" / "prometheus"
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
# Panels fed by traffic this test does not make: no rate limiter is configured.
NOT_GENERATED = {"Rate-limited traffic"}
VARIABLES = {
    "$__rate_interval": "30s",
    "$service": "web",
    "$source": ".*",
    "$instance": ".*",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every target of every panel."""
    return [
        (path.name, panel["title"], target["expr"])
        for path in sorted(GRAFANA.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]


def rule_expressions() -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for path in sorted((PROMETHEUS / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(admin_port: int) -> str:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
        config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == {"meshproxy-sidecars", "meshcontrol"}
        job = jobs["meshproxy-sidecars"]
        config["scrape_configs"] = [job]  # no control plane runs here
        job["static_configs"] = [{"targets": [f"127.0.0.1:{admin_port}"]}]
        job.pop("file_sd_configs", None)
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [
                    PROMETHEUS_BIN,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=log,
            )
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(20), aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            return url
                assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
                await asyncio.sleep(0.2)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def query(session: aiohttp.ClientSession, url: str, expr: str) -> list[Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[Any] = body["data"]["result"]
    return result


async def one_request(port: int, request: bytes) -> int:
    conn = await Conn.open(port)
    try:
        return (await conn.request(request)).status
    finally:
        await conn.close()


async def make_traffic(port: int) -> int:
    """One round of every kind of traffic the panels show; returns requests sent."""
    statuses = [
        await one_request(port, get(path))
        for path in ("/", "/big?n=3000", "/big?n=70000", "/chunked?n=3")
    ]
    body = b"x" * 5000
    statuses.append(
        await one_request(
            port, b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 5000\r\n\r\n" + body
        )
    )
    statuses.append(await one_request(port, get("/reset")))
    statuses.append(await one_request(port, get("/", host="nowhere.example")))
    statuses.append(await one_request(port, get("/", host="dead")))
    slow = [one_request(port, get("/slow?ms=300", host="narrow")) for _ in range(4)]
    statuses.extend(await asyncio.gather(*slow))
    assert 200 in statuses and any(s >= 500 for s in statuses) and 404 in statuses
    return len(statuses)


async def test_prometheus_answers_every_panel_and_rule_of_a_live_sidecar(
    origin: Origin, proxies: StartProxy, prometheus_for: Any
) -> None:
    config = basic_config({"web": [origin.port], "dead": [free_port()], "narrow": [origin.port]})
    config["snapshot"]["policies"] = [
        {"service": "narrow", "circuit_breakers": {"max_requests": 1, "max_pending_requests": 1}}
    ]
    proxy = await proxies(config)
    port = proxy.ports["outbound"]
    async with asyncio.timeout(55):
        url = await prometheus_for(proxy.admin_port)
        async with aiohttp.ClientSession() as session:
            while not await query(session, url, "up == 1"):  # noqa: ASYNC110 - scraping has begun
                await asyncio.sleep(0.2)
            sent = 0
            for _ in range(3):
                sent += await make_traffic(port)
                await asyncio.sleep(1.0)
            while True:  # until a scrape after the last request has landed
                result = await query(session, url, "sum(meshproxy_requests_total)")
                if result and float(result[0]["value"][1]) >= sent:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.5)  # two more scrapes, so that rates have two points

            empty = []
            for board, title, expr in dashboard_targets():
                if not await query(session, url, substitute(expr)):
                    empty.append((board, title, expr))
            empty_panels = {(b, t) for b, t, _ in empty}
            for board, title, _ in dashboard_targets():
                panel_targets = [e for b, t, e in dashboard_targets() if (b, t) == (board, title)]
                all_empty = sum(1 for b, t, _ in empty if (b, t) == (board, title)) == len(
                    panel_targets
                )
                if all_empty and title not in NOT_GENERATED:
                    pytest.fail(f"panel {board} / {title!r} has no data: {empty}")
            assert empty_panels, "some target (rate limits) is expected to have no data"

            for _name, expr in rule_expressions():
                await query(session, url, expr)  # evaluates without error
            async with session.get(f"{url}/api/v1/rules") as resp:
                rules = (await resp.json())["data"]["groups"]
            health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
            assert len(health) == len(rule_expressions())
            assert set(health.values()) <= {"ok", "unknown"}, health

            rate = await query(session, url, substitute(dashboard_targets()[0][2]))
            assert float(rate[0]["value"][1]) > 0
