"""One assigned instance on this node: its app process, its sidecar, its registration.

A start: allocate a port, start the app (``PORT`` in its environment, resource
limits applied before ``exec``), wait until it accepts connections, start its
sidecar (dynamic mode; inbound listener -> the app), register the sidecar's
inbound port in the mesh registry with a TTL kept alive by heartbeats.

A crash (either process exits, or a start fails) is torn down at once and
started again after an exponential backoff.  A stop drains: deregister first,
give the callers' sidecars ``drain_delay`` to learn it, SIGTERM the sidecar (it
finishes what is in flight) then the app, SIGKILL after ``stop_deadline``; then
the node's allocation is released by the control plane when the agent reports
the instance gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout
from prometheus_client.parser import text_string_to_metric_families

from control.agent import sidecar as sidecars
from control.agent.backoff import Backoff
from control.agent.channel import Channel, ChannelError
from control.agent.limits import LimitError, Limits, Request
from control.agent.sidecar import Sidecar, SidecarError
from control.nodes import Assignment, InstanceReport, InstanceState, NodeRegistration

log = logging.getLogger("meshcontrol.agent")
REGISTRATION_TTL = "10s"
HEARTBEAT_EVERY = 2.0
READY_TIMEOUT = 20.0
SCRAPE_TIMEOUT = ClientTimeout(total=2.0)


class StartError(Exception):
    """The app or its sidecar did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def inbound_load(exposition: str) -> tuple[float, float]:
    """(requests, seconds spent in requests) on the sidecar's inbound side, cumulative."""
    requests = busy = 0.0
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith(("meshproxy_requests", "meshproxy_request_duration")):
            continue
        for sample in family.samples:
            if sample.labels.get("direction") != "inbound":
                continue
            if sample.name == "meshproxy_requests_total":
                requests += sample.value
            elif sample.name == "meshproxy_request_duration_seconds_sum":
                busy += sample.value
    return requests, busy


async def _wait_listening(port: int, app: asyncio.subprocess.Process) -> None:
    """Until the app accepts on ``port``; the caller bounds the wait."""
    while True:
        if app.returncode is not None:
            raise StartError(f"the app exited with {app.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def _terminate(process: asyncio.subprocess.Process, deadline: float) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # the app may have children
    try:
        await asyncio.wait_for(process.wait(), deadline)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class InstanceRunner:
    def __init__(
        self,
        assignment: Assignment,
        node: NodeRegistration,
        channel: Channel,
        limits: Limits,
        workdir: Path,
        *,
        drain_delay: float = 1.0,
        stop_deadline: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.assignment = assignment
        self.node = node
        self.channel = channel
        self.limits = limits
        self.workdir = workdir
        self.drain_delay = drain_delay
        self.stop_deadline = stop_deadline
        self.backoff = backoff or Backoff()
        spec = assignment.spec
        self.request = Request(spec.cpu_millis, spec.memory_bytes, spec.cpu_seconds)
        self.state: InstanceState = "starting"
        self.restarts = 0
        self.message = ""
        self.app: asyncio.subprocess.Process | None = None
        self.app_port: int | None = None
        self.sidecar: Sidecar | None = None
        self.registered_as: str | None = None
        self._load = (0.0, 0.0)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.assignment.id

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"instance {self.id}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def report(self) -> InstanceReport:
        sidecar = self.sidecar
        return InstanceReport(
            id=self.id,
            state=self.state,
            port=sidecar.inbound_port if sidecar is not None else None,
            app_port=self.app_port,
            registered_as=self.registered_as,
            limits=self.limits.describe(self.request),
            restarts=self.restarts,
            message=self.message[:500],
            requests=self._load[0],
            busy_seconds=self._load[1],
        )

    async def scrape(self, session: ClientSession) -> None:
        """Read the sidecar's inbound counters (kept if the sidecar does not answer)."""
        sidecar = self.sidecar
        if self.state != "running" or sidecar is None:
            return
        url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
        try:
            async with session.get(url, timeout=SCRAPE_TIMEOUT) as response:
                text = await response.text()
            self._load = inbound_load(text)
        except (ClientError, TimeoutError, ValueError) as exc:
            log.debug("scrape of %s failed: %r", self.id, exc)

    # -- the life of the instance -------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                started = loop.time()
                self.state = "starting"
                try:
                    await self._start_once()
                    self.state, self.message = "running", ""
                    why = await self._supervise()
                except (StartError, SidecarError, LimitError, ChannelError, OSError) as exc:
                    why = f"start failed: {exc}"
                except TimeoutError:
                    why = "start failed: the app did not listen in time"
                if self._stop.is_set():
                    break
                self.restarts += 1
                self.message = why
                self.state = "backoff"
                log.warning("instance %s: %s", self.id, why)
                await self._teardown(drain=False)
                delay = self.backoff.crashed(started, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self.state = "stopping"
            await self._teardown(drain=True)
            self.limits.release(self.id)

    async def _start_once(self) -> None:
        spec = self.assignment.spec
        self.app_port = free_port()
        env = {**os.environ, **spec.env, spec.port_env: str(self.app_port)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"{self.id}.app.log").open("ab") as sink:
            self.app = await asyncio.create_subprocess_exec(
                *spec.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                preexec_fn=self.limits.preexec(self.id, self.request),
                start_new_session=True,
            )
        async with asyncio.timeout(READY_TIMEOUT):
            await _wait_listening(self.app_port, self.app)
        config = sidecars.bootstrap(
            self.id,
            self.assignment.service,
            self.channel.url,
            self.channel.token,
            self.app_port,
            self.node.zone,
        )
        path = self.workdir / f"{self.id}.sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        self.sidecar = await sidecars.start(path)
        await self._register()

    async def _register(self) -> None:
        assert self.sidecar is not None
        spec = {
            "service": self.assignment.service,
            "address": self.node.address,
            "port": self.sidecar.inbound_port,
            "labels": {**self.assignment.spec.labels, "node": self.node.id, "instance": self.id},
            "zone": self.node.zone,
            "ttl": REGISTRATION_TTL,
        }
        self.registered_as = await self.channel.register_instance(spec)

    async def _supervise(self) -> str:
        """Until a process exits (answers why) or a stop is asked (answers "")."""
        assert self.app is not None and self.sidecar is not None
        app = asyncio.ensure_future(self.app.wait())
        sidecar = asyncio.ensure_future(self.sidecar.process.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                await asyncio.wait({app, sidecar, stop}, timeout=HEARTBEAT_EVERY,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if stop.done():
                    return ""
                if app.done():
                    return f"the app exited with {self.app.returncode}"
                if sidecar.done():
                    code, tail = self.sidecar.process.returncode, " | ".join(self.sidecar.log_tail)
                    return f"the sidecar exited with {code}: {tail[-300:]}"
                await self._heartbeat()
        finally:
            for waiter in (app, sidecar, stop):
                waiter.cancel()

    async def _heartbeat(self) -> None:
        if self.registered_as is None:
            return
        try:
            await self.channel.heartbeat(self.registered_as)
        except ChannelError as exc:
            if exc.status == 404:  # the registration lapsed or the control plane restarted
                log.info("instance %s: registering again", self.id)
                with contextlib.suppress(ChannelError):
                    await self._register()
            else:
                log.warning("heartbeat of %s failed: %s", self.id, exc)

    async def _teardown(self, drain: bool) -> None:
        if self.registered_as is not None:
            try:
                await self.channel.deregister(self.registered_as)
            except ChannelError as exc:
                log.warning("deregistering %s failed (its TTL will lapse): %s", self.id, exc)
            self.registered_as = None
            if drain and self.drain_delay > 0:
                await asyncio.sleep(self.drain_delay)
        if self.sidecar is not None:
            await self.sidecar.stop(self.stop_deadline)
            self.sidecar = None
        if self.app is not None:
            await _terminate(self.app, self.stop_deadline)
            self.app = None
        self._load = (0.0, 0.0)
