"""meshctl against a real control plane in-process (aiohttp test server on
127.0.0.1, a temporary SQLite file).  meshctl is synchronous, so it runs on a
thread while the server runs on the test's loop."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from control import meshctl
from control.app import build_app
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore

TOKEN = "admin-secret"
MESH = """\
kind: Policy
service: ratings
subsets: {v1: {labels: {version: v1}}, v2: {labels: {version: v2}}}
load_balancer: {policy: least_request}
---
kind: RouteTable
service: ratings
rules:
  - backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
---
kind: Access
service: ratings
action: allow
rules: [{from: {services: [reviews]}}]
"""


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    settings = ControlSettings(admin_token=TOKEN, read_token="reader", data_dir=tmp_path)
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield str(client.make_url("")).rstrip("/")


async def ctl(url: str, *args: str, token: str | None = TOKEN) -> tuple[int, str]:
    out = io.StringIO()
    argv = ["--url", url, *(["--token", token] if token else []), *args]
    code = await asyncio.to_thread(meshctl.main, argv, out)
    return code, out.getvalue()


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    return path


async def test_apply_writes_every_document_in_order(url: str, mesh_file: Path) -> None:
    code, out = await ctl(url, "apply", "-f", str(mesh_file))
    assert code == 0
    assert out.splitlines() == [
        "policies/ratings applied (version 1)",
        "routes/ratings applied (version 2)",
        "access/ratings applied (version 3)",
    ]


async def test_get_prints_readable_tables(url: str, mesh_file: Path) -> None:
    await ctl(url, "apply", "-f", str(mesh_file))
    code, out = await ctl(url, "get", "routes")
    assert code == 0
    assert out.splitlines() == [
        "SERVICE  RULES  FIRST RULE BACKENDS",
        "ratings  1      v1=90,v2=10",
    ]
    _, out = await ctl(url, "get", "policies", token="reader")
    assert out.splitlines()[1].split() == ["ratings", "v1,v2", "least_request", "0"]
    _, out = await ctl(url, "get", "services")
    assert out.splitlines()[1].split() == ["ratings", "0", "0", "yes", "yes", "yes"]
    _, out = await ctl(url, "get", "history")
    assert [line.split()[0] for line in out.splitlines()] == ["VERSION", "3", "2", "1"]


async def test_get_one_resource_as_yaml_or_json_round_trips(url: str, mesh_file: Path) -> None:
    await ctl(url, "apply", "-f", str(mesh_file))
    _, as_yaml = await ctl(url, "get", "policies", "ratings", "-o", "yaml")
    _, as_json = await ctl(url, "get", "policies", "ratings", "-o", "json")
    assert yaml.safe_load(as_yaml) == json.loads(as_json)
    assert json.loads(as_json)["load_balancer"]["policy"] == "least_request"


async def test_an_invalid_document_prints_the_failing_fields(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Policy\nservice: ratings\nload_balancer: {policy: fastest}\n")
    code, _ = await ctl(url, "apply", "-f", str(bad))
    err = capsys.readouterr().err
    assert code == 1
    assert "policies/ratings not applied" in err and "422" in err
    assert "  load_balancer.policy: " in err


async def test_documents_without_kind_or_service_stop_the_whole_apply(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Policy\nservice: ok\n---\nkind: Gateway\nservice: x\n---\nkind: Access\n")
    code, out = await ctl(url, "apply", "-f", str(bad))
    err = capsys.readouterr().err
    assert code == 1 and out == ""
    assert "document 2: kind must be one of" in err
    assert "document 3 (Access): 'service' is required" in err
    _, listed = await ctl(url, "get", "services", "-o", "json")
    assert json.loads(listed) == []


async def test_delete_and_rollback_report_the_new_version(url: str, mesh_file: Path) -> None:
    await ctl(url, "apply", "-f", str(mesh_file))
    code, out = await ctl(url, "delete", "Access", "ratings")
    assert (code, out) == (0, "access/ratings deleted (version 4)\n")
    code, out = await ctl(url, "rollback", "3")
    assert (code, out) == (0, "rolled back to version 3 (now version 5)\n")
    _, out = await ctl(url, "get", "access", "ratings", "-o", "json")
    assert json.loads(out)["action"] == "allow"


async def test_status_lists_proxies_with_acked_version_and_last_error(url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for node in ("p1", "p2"):
            params = {"node": node, "service": "ratings", "wait": "0s"}
            async with s.get(f"{url}/v1/snapshot", params=params) as r:
                sent = await r.json()
            ack = {"node": node, "version": sent["version"], "nonce": sent["nonce"]}
            if node == "p2":
                ack["error"] = "routes.0: unknown subset"
            async with s.post(f"{url}/v1/ack", json=ack) as r:
                assert r.status == 200
    code, out = await ctl(url, "status")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "control plane at version 0"
    assert lines[1].split()[:5] == ["ID", "SERVICE", "ACKED", "SENT", "LAST"]
    assert lines[2].split()[:4] == ["p1", "ratings", "0", "0"]
    assert lines[3].split()[:5] == ["p2", "ratings", "-", "0", "v0:"]
    assert "unknown subset" in lines[3] and lines[3].endswith("s ago")


async def test_errors_are_one_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening
    code, _ = await ctl(closed, "get", "services")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"meshctl: cannot reach the control plane at {closed}:")
    assert "refused" in err.lower()
    code, _ = await ctl(url, "get", "routes", "nothing")
    assert (code, capsys.readouterr().err) == (
        1,
        "meshctl: GET /v1/routes/nothing: 404 no routes for service 'nothing'\n",
    )
    code, _ = await ctl(url, "get", "services", token=None)
    err = capsys.readouterr().err
    assert code == 1 and "401" in err and "MESHCTL_TOKEN" in err
    code, _ = await ctl(url, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert "cannot read" in capsys.readouterr().err


def test_meshctl_url_and_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHCTL_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("MESHCTL_TOKEN", "t")
    assert meshctl.main(["status"], io.StringIO()) == 1
    assert "at http://127.0.0.1:1:" in capsys.readouterr().err


def test_tables_pad_columns_and_show_absent_values_as_a_dash() -> None:
    assert meshctl.table(["A", "LONGER"], [["xyz", None], [1, "b"]]).splitlines() == [
        "A    LONGER",
        "xyz  -",
        "1    b",
    ]
