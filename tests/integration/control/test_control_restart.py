"""A control-plane restart leaves the workloads running.

Real processes on 127.0.0.1: ``meshcontrol run`` with a SQLite file, one node agent
(``meshcontrol agent``) and a spec of 2 replicas of a trivial app that records its
pid.  The control plane is stopped with SIGTERM and started again on the same port
with the same file: the agent registers again carrying its instances, and the same
instances (same ids, same app processes) keep running; scaling to 3 afterwards
starts exactly one more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.controlproc import ROOT, meshcontrol

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "restart-admin-token"
ENV = {"MESHCONTROL_ADMIN_TOKEN": TOKEN, "MESHCONTROL_RESTART_GRACE": "2"}
SERVICE = "echo"
# Records its pid (one line per start) and answers HTTP on $PORT.
APP = """
import http.server, os
with open(os.environ["PID_FILE"], "a") as f:
    f.write(f"{os.getpid()}\\n")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])),
                       http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def spec(replicas: int, pid_file: Path) -> dict[str, Any]:
    return {
        "command": [sys.executable, "-c", APP],
        "env": {"PID_FILE": str(pid_file)},
        "cpu": "100m",
        "memory": "64Mi",
        "min_replicas": replicas,
        "max_replicas": replicas,
    }


def call(base: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check: Callable[[], T | None], seconds: float, what: str, log: Path) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except (urllib.error.URLError, OSError):
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds:g}s\n{log.read_text(errors='replace')}")


@contextmanager
def node_agent(url: str, workdir: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "control", "agent", "--control-plane", url, "--node", "n1",
             "--cpu", "2000m", "--memory", "2Gi", "--token", TOKEN, "--work-dir", str(workdir)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)  # the agent stops its instances
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def running(base: str) -> dict[str, int] | None:
    """Instance id -> app port of the instances the agent reports running."""
    body = call(base, "GET", f"/v1/services/{SERVICE}/spec")
    found = {
        i["id"]: i["status"]["app_port"]
        for i in body["instances"]
        if i["status"] is not None and i["status"]["state"] == "running"
    }
    return found if len(found) == len(body["instances"]) else None


def pids(pid_file: Path) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_restart_keeps_the_same_instances_running_and_scaling_adds_only_new_ones(
    tmp_path: Path,
) -> None:
    data = tmp_path / "control"
    data.mkdir()
    pid_file = tmp_path / "pids"
    log = tmp_path / "agent.log"
    cp_log = tmp_path / "control.log"
    with meshcontrol(data, ENV, log=cp_log) as first_url:
        port = int(first_url.rsplit(":", 1)[1])
        agent = node_agent(first_url, tmp_path / "work", log)
        process = agent.__enter__()
        try:
            wait_for(lambda: call(first_url, "GET", "/v1/nodes")["nodes"], 20, "registered", log)
            call(first_url, "PUT", f"/v1/services/{SERVICE}/spec", spec(2, pid_file))
            before = wait_for(
                lambda: (r := running(first_url)) and len(r) == 2 and r, 40, "2 running", log
            )
        except BaseException:
            agent.__exit__(*sys.exc_info())
            raise
    try:
        assert process.poll() is None
        started = pids(pid_file)
        assert len(started) == 2 and all(alive(p) for p in started)

        with meshcontrol(data, ENV, log=cp_log, port=port) as url:
            after = wait_for(lambda: (r := running(url)) and len(r) == 2 and r, 30, "back", log)
            assert after == before  # same instance ids, same app ports
            nodes = call(url, "GET", "/v1/nodes")["nodes"]
            assert [n["registration"]["id"] for n in nodes] == ["n1"]
            assert sorted(i["id"] for i in nodes[0]["instances"]) == sorted(before)
            assert pids(pid_file) == started and all(alive(p) for p in started)

            time.sleep(3.0)  # past the restart grace: the reconciler neither adds nor removes
            assert running(url) == before and pids(pid_file) == started

            call(url, "PUT", f"/v1/services/{SERVICE}/spec", spec(3, pid_file))
            three = wait_for(lambda: (r := running(url)) and len(r) == 3 and r, 40, "3", log)
            assert set(before) < set(three)
            now = pids(pid_file)
            assert now[:2] == started and len(now) == 3
            assert all(alive(p) for p in now)
            history = call(url, "GET", "/v1/history?limit=50")
            targets = [e["target"] for e in history["entries"]]
            assert targets.count(f"specs/{SERVICE}") == 2
    finally:
        agent.__exit__(None, None, None)
    assert not any(alive(p) for p in pids(pid_file))  # the agent stopped them on its way out
