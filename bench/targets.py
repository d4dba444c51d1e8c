"""The processes under test: the origin and each proxy, started ready to measure.

Each ``start_*`` function writes its config into the run's work directory,
starts the process in the run's ``ProcessGroup`` (which stops it), waits until
it serves, and returns a ``Target``: the URL to load and the pid whose process
tree's RSS is reported.  Measuring is not done here.
"""

from __future__ import annotations

import http.client
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import configs
from bench import mtls as mtls_bench
from bench.procs import ProcessError, ProcessGroup, free_port, wait_log, wait_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
REPO = Path(__file__).resolve().parents[1]

_LISTENING = re.compile(r"\blistening name=(\S+)\b.*?\bport=(\d+)")
_ADMIN = re.compile(r"\badmin\b.*?\bport=(\d+)")


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    pid: int
    note: str = ""
    also: tuple[int, ...] = ()  # other processes serving it (a second hop)

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.pid, *self.also)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclass(frozen=True, slots=True)
class Run:
    """What every target needs: where to write, who stops it, where the origin is."""

    group: ProcessGroup
    workdir: Path
    origin_ports: tuple[int, ...]


def start_origin(group: ProcessGroup, workdir: Path, kind: str) -> tuple[Target, tuple[int, ...]]:
    """The origin on three ports in one process (one nginx worker, or one uvloop
    process): the first port serves every target, the second is the v2 subset
    of the split, the three together the endpoints of the balancer targets."""
    if kind == "nginx":
        ports = (free_port(), free_port(), free_port())
        prefix = workdir / "nginx-origin"
        proc = _start_nginx(
            group, prefix, configs.nginx_origin_conf(str(prefix), ports), role="driver"
        )
        for port in ports:
            wait_port(port, proc)
        return Target("origin", ports[0], proc.pid, "nginx"), ports
    log = workdir / "origin.log"
    proc = group.start(
        [sys.executable, "-m", "bench.origin", "--ports", "3"], log, _pythonpath(), role="driver"
    )
    wait_log(log, re.compile(r"listening port=(\d+) subset=v3"), proc)
    found = dict(re.findall(r"listening port=(\d+) subset=(v\d)", log.read_text()))
    by_subset = {subset: int(port) for port, subset in found.items()}
    ports = (by_subset["v1"], by_subset["v2"], by_subset["v3"])
    return Target("origin", ports[0], proc.pid, "uvloop"), ports


def start_direct(run: Run, origin: Target) -> Target:
    return Target("direct", origin.port, origin.pid, f"the origin itself ({origin.note})")


def start_haproxy(run: Run) -> Target:
    port = free_port()
    cfg = run.workdir / "haproxy.cfg"
    cfg.write_text(configs.haproxy_conf(port, run.origin_ports[0]))
    # -db: stay in the foreground, one process, no master-worker.
    proc = run.group.start([HAPROXY, "-db", "-f", str(cfg)], run.workdir / "haproxy.log")
    wait_port(port, proc)
    return Target("haproxy", port, proc.pid, "nbthread 1, http-reuse always")


def start_nginx(run: Run) -> Target:
    port = free_port()
    prefix = run.workdir / "nginx-proxy"
    proc = _start_nginx(
        run.group, prefix, configs.nginx_proxy_conf(str(prefix), port, run.origin_ports[0])
    )
    wait_port(port, proc)
    return Target("nginx", port, proc.pid, "1 worker, keepalive 32")


def start_aiohttp(run: Run) -> Target:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.naive_aiohttp",
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{run.origin_ports[0]}",
    ]
    proc = run.group.start(argv, run.workdir / "aiohttp.log", _pythonpath())
    wait_port(port, proc)
    return Target("aiohttp", port, proc.pid, "one ClientSession, uvloop")


def start_meshproxy(
    run: Run, name: str, bootstrap: dict[str, Any], note: str = "", listener: str = "outbound"
) -> tuple[Target, int]:
    """A sidecar (one worker) on OS-chosen ports; returns the target (its
    ``listener``) and its admin port."""
    cfg = run.workdir / f"{name}.yaml"
    cfg.write_text(configs.to_yaml(bootstrap))
    log = run.workdir / f"{name}.log"
    argv = [sys.executable, "-m", "meshproxy", "run", "--config", str(cfg), "--workers", "1"]
    proc = run.group.start(argv, log)
    listening = wait_log(log, _LISTENING, proc)
    admin = wait_log(log, _ADMIN, proc)
    port = next(int(m.group(2)) for m in listening if m.group(1) == listener)
    admin_port = int(admin[0].group(1))
    _wait_ready(admin_port, proc.poll)
    return Target(name, port, proc.pid, note), admin_port


def start_two_hops(run: Run, name: str, mtls: bool) -> tuple[Target, Target, dict[str, str]]:
    """Two sidecars in series: the first's outbound listener (the target) calls
    the second's inbound listener in front of the origin, over STRICT mTLS when
    ``mtls``.  Returns (first hop, second hop's inbound, client TLS files)."""
    files = (
        mtls_bench.write_identities(run.workdir, [configs.SERVICE, "bench-client"]) if mtls else {}
    )
    second, _ = start_meshproxy(
        run,
        f"{name}-inbound",
        configs.inbound_bootstrap(run.origin_ports[0], files.get(configs.SERVICE)),
        listener="inbound",
    )
    note = "two sidecars in series, " + ("STRICT mTLS between them" if mtls else "plaintext")
    first, _ = start_meshproxy(
        run, name, configs.outbound_hop_bootstrap(second.port, files.get("bench-client")), note
    )
    return first, second, files.get("bench-client", {})


def _wait_ready(admin_port: int, exited: Callable[[], int | None], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited() is not None:
            raise ProcessError("the sidecar exited before it was ready")
        try:
            if get(admin_port, "/ready", host="127.0.0.1")[0][0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise ProcessError(f"/ready did not answer 200 within {timeout_s:.0f}s")


def get(
    port: int, path: str = "/", host: str = configs.SERVICE, count: int = 1
) -> list[tuple[int, str]]:
    """``count`` GETs over one keep-alive connection: (status, X-Subset) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        answers = []
        for _ in range(count):
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            response.read()
            answers.append((response.status, response.getheader("X-Subset") or ""))
            if response.will_close:
                conn.close()
        return answers
    finally:
        conn.close()


def _start_nginx(group: ProcessGroup, prefix: Path, conf: str, role: str = "target") -> Any:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    argv = [NGINX, "-p", str(prefix), "-e", "stderr", "-c", str(prefix / "nginx.conf")]
    return group.start([*argv, "-g", "daemon off;"], prefix / "stderr.log", role=role)


def _pythonpath() -> dict[str, str]:
    # ``python -m bench.x`` from any working directory: bench/ is not installed.
    return {"PYTHONPATH": str(REPO)}
