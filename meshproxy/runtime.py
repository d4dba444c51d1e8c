"""The sidecar process: bind listeners, run the admin server, drain on signal.

One worker (the default): this process binds every listener and runs the
admin server.  ``--workers N``: this process becomes a supervisor.  It picks
concrete ports (binding port 0 once, with SO_REUSEPORT, and holding that
unlistened socket so the port stays ours), points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory, and starts N
workers (``python -m meshproxy run`` with the ports and their index in the
environment), each binding the same ports with SO_REUSEPORT so the kernel
spreads connections.  The admin server runs in the supervisor: it outlives
any one worker, its /ready means "every worker is serving", and its /metrics
sums the workers' files.  A worker that dies is restarted; SIGTERM/SIGINT is
forwarded to the workers.

Drain (SIGTERM/SIGINT): readiness goes false, listeners stop accepting, idle
keep-alive connections close, in-flight requests finish with
``Connection: close``; whatever is left at ``drain_timeout`` is closed.

Routing and upstream state: one ``Resolver`` per snapshot (route table +
clusters), shared by every listener of the worker; ``apply_snapshot`` builds
the next one (keeping live endpoint state) and swaps it into every listener
at once.  One ``HealthProbes`` task per worker runs the active health checks
of the resolver in force.  Exchanges go to the worker's ``MeshObserver``
(metrics, access log, tracing); ``MetricsObserver`` (request counts only)
stands in where no worker runs (the supervisor, tests).

Log lines are ``key=value`` text on stderr; ``listening name=... address=...
port=...`` and ``admin address=... port=...`` give the bound ports.

It must not contain protocol logic (``http1``, ``tcp``) or routing (``resolve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from meshproxy.admin import AdminServer, start_admin
from meshproxy.config import Bootstrap, ConfigError, Listener, Snapshot
from meshproxy.http1 import HttpServer, ListenerContext
from meshproxy.http1.context import MetricsObserver
from meshproxy.http1.policy import ListenerPolicy
from meshproxy.observe.exchange import Observer
from meshproxy.observe.metrics import ProxyMetrics, mark_worker_dead
from meshproxy.observe.multiproc import MULTIPROC_ENV
from meshproxy.observe.observer import MeshObserver
from meshproxy.policy import Counters, compile_chain
from meshproxy.resolve import Resolver
from meshproxy.security.handshake import InboundListener
from meshproxy.security.mesh import MeshTLS
from meshproxy.security.sidecar import SidecarSecurity
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import CertificateError
from meshproxy.settings import Settings
from meshproxy.tcp import TcpProxy
from meshproxy.upstream import Upstreams
from meshproxy.upstream.probe import HealthProbes
from meshproxy.xds import first_snapshot, watcher_for

log = logging.getLogger("meshproxy")

WORKER_INDEX_ENV = "MESHPROXY_WORKER_INDEX"
WORKER_PORTS_ENV = "MESHPROXY_WORKER_PORTS"
READY_FD_ENV = "MESHPROXY_READY_FD"
RESTART_DELAY = 0.5


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def make_metrics(boot: Bootstrap) -> ProxyMetrics:
    return ProxyMetrics(services=list(boot.snapshot.services))


class Runtime:
    """What the admin server sees of a running sidecar (``admin.AdminState``)."""

    def __init__(self, boot: Bootstrap, settings: Settings, metrics: ProxyMetrics) -> None:
        self.boot = boot
        self.settings = settings
        self._metrics = metrics
        self._ready = False
        self.contexts: list[ListenerContext] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.bound: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.resolver: Resolver | None = None
        self.observer: Observer = MetricsObserver(metrics)
        self.mesh_observer: MeshObserver | None = None
        self.probes: HealthProbes | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # old policy chains being closed
        # One set of policy counters for every chain, so totals survive snapshots.
        self.policy_counters = Counters()
        metrics.watch_policy_events(self.policy_counters.items)
        # mTLS (``security.sidecar``): None while the bootstrap configures no identity.
        self.mesh: MeshTLS | None = None
        self.tls_listeners: list[InboundListener] = []

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def metrics(self) -> ProxyMetrics:
        return self._metrics

    def config_dump(self) -> dict[str, object]:
        dump: dict[str, object] = self.boot.model_dump(mode="json", by_alias=True)
        dump["bound_ports"] = dict(self.bound)
        dump["workers"] = self.settings.workers
        return dump

    def build_resolver(self, snapshot: Snapshot) -> Resolver:
        """Compile ``snapshot``; raises ``ConfigError`` when it is refused."""
        boot = self.boot
        return Resolver(
            snapshot,
            boot.listeners,
            boot.node.service,
            now=asyncio.get_running_loop().time(),
            local_zone=boot.node.zone,
            previous=self.resolver,
        )

    def build_policies(self, snapshot: Snapshot) -> dict[str, ListenerPolicy]:
        """One policy chain per HTTP listener, empty ones left out.  A service's
        rate limits and access policies apply on the inbound listeners of its
        own sidecar; outbound listeners run the outbound user filters only (see
        ``http1.policy``).  Raises ``ConfigError`` for a filter it cannot build."""
        policies: dict[str, ListenerPolicy] = {}
        for listener in self.boot.listeners:
            if listener.protocol != "http":
                continue
            inbound = listener.direction == "inbound"
            service = self.boot.node.service if inbound else None
            chain = compile_chain(
                snapshot, service, listener.direction, counters=self.policy_counters
            )
            if chain.names:
                route = "inbound" if listener.local_app else None
                record = self._metrics.rate_limit_decision
                policies[listener.name] = ListenerPolicy(chain, service or "", route, record)
        return policies

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Put ``snapshot`` in force: routes, clusters and resolver rebuilt
        (live endpoint state kept) and swapped into every listener at once;
        requests in flight finish on the old ones.  Raises ``ConfigError``
        (nothing changes) when the snapshot is refused."""
        try:
            resolver = self.build_resolver(snapshot)
            policies = self.build_policies(snapshot)
        except ConfigError:
            if self.mesh_observer is not None:
                self.mesh_observer.snapshot_refused()
            raise
        self.resolver = resolver
        loop = asyncio.get_running_loop()
        for ctx in self.contexts:
            ctx.resolver = resolver
            old, ctx.policy = ctx.policy, policies.get(ctx.name)
            if old is not None:  # requests in flight keep their chain; closed after
                self._closing.add(task := loop.create_task(old.aclose()))
                task.add_done_callback(self._closing.discard)
        if self.mesh is not None:
            self.mesh.update(snapshot)
        if self.probes is not None:
            self.probes.wake()
        if self.mesh_observer is not None:
            self.mesh_observer.snapshot_applied(snapshot, snapshot.version)

    def certs(self) -> dict[str, object]:
        """The admin ``/certs`` view: the identity and certificates in use."""
        mesh = self.mesh
        if mesh is None:
            return {"enabled": False, "mode": self.boot.security.mode}
        view: dict[str, object] = mesh.contexts.describe(time.time())
        view["enabled"] = True
        view["inbound_mode"] = mesh.inbound_mode()
        view["mtls_services"] = sorted(mesh.expected)
        return view

    def clusters(self) -> dict[str, object]:
        """The admin ``/clusters`` view of this worker's upstream state."""
        if self.resolver is None:
            return {}
        return self.resolver.upstreams.snapshot_for_admin(asyncio.get_running_loop().time())

    def start_health_checks(self) -> None:
        loop = asyncio.get_running_loop()
        self.probes = HealthProbes(self._current_upstreams, loop, self.mesh)
        self._probe_task = loop.create_task(self.probes.run())

    def _current_upstreams(self) -> Upstreams:
        assert self.resolver is not None
        return self.resolver.upstreams

    async def stop_health_checks(self) -> None:
        task = self._probe_task
        self._probe_task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def drain_timeout(self) -> float:
        if self.settings.drain_timeout is not None:
            return self.settings.drain_timeout
        return self.boot.drain_timeout

    def on_signal(self, signum: int) -> None:
        log.info("signal name=%s action=drain", signal.Signals(signum).name)
        self._ready = False
        self.stop.set()

    # -- listeners ---------------------------------------------------------

    async def bind(self, ports: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        boot = self.boot
        sink = self._metrics
        resolver = self.resolver = self.build_resolver(boot.snapshot)
        policies = self.build_policies(boot.snapshot)
        for listener in boot.listeners:
            ctx = ListenerContext(
                loop,
                listener,
                resolver,
                sink,
                boot.limits.max_head_size,
                boot.limits.max_headers,
                observer=self.observer,
                source_service=boot.node.service,
            )
            ctx.policy = policies.get(listener.name)
            self.contexts.append(ctx)
            factory = (
                (lambda c=ctx: TcpProxy(c))
                if listener.protocol == "tcp"
                else (lambda c=ctx: HttpServer(c))
            )
            port = ports.get(listener.name, listener.port)
            mesh = self.mesh
            if mesh is not None:
                if listener.direction == "outbound":
                    ctx.mtls = mesh
                else:
                    bound = await self._bind_mtls(mesh, ctx, port)
                    self.bound[listener.name] = bound
                    log.info(
                        "listening name=%s protocol=%s tls=mesh address=%s port=%d",
                        listener.name,
                        listener.protocol,
                        listener.address,
                        bound,
                    )
                    continue
            server = await loop.create_server(
                factory, listener.address, port, reuse_port=True, backlog=1024
            )
            self.servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            self.bound[listener.name] = bound
            log.info(
                "listening name=%s protocol=%s address=%s port=%d",
                listener.name,
                listener.protocol,
                listener.address,
                bound,
            )

    async def _bind_mtls(self, mesh: MeshTLS, ctx: ListenerContext, port: int) -> int:
        """An inbound listener that admits by the node's TLS mode (per connection)."""

        def app(peer: SpiffeId | None) -> asyncio.Protocol:
            if ctx.listener.protocol == "tcp":
                return TcpProxy(ctx)
            server = HttpServer(ctx)
            server.principal = None if peer is None else str(peer)
            return server

        listener = InboundListener(
            mesh.contexts,
            mesh.inbound_mode,
            app,
            mesh.refusals,
            mesh.trust_domain,
            self.boot.security.handshake_timeout,
        )
        await listener.start(ctx.listener.address, port, reuse_port=True)
        self.tls_listeners.append(listener)
        return listener.port

    async def drain(self) -> None:
        """Stop accepting, finish what is in flight, close the rest at the deadline."""
        self._ready = False
        for server in self.servers:
            server.close()
        for tls_listener in self.tls_listeners:
            await tls_listener.close()
        for ctx in self.contexts:
            ctx.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while loop.time() < deadline and any(ctx.connections for ctx in self.contexts):
            for ctx in self.contexts:
                ctx.drain()  # connections idle since the last pass close now
            await asyncio.sleep(0.05)
        left = sum(len(ctx.connections) for ctx in self.contexts)
        for ctx in self.contexts:
            ctx.close_all()
        log.info("drained connections_closed_at_deadline=%d", left)
        for ctx in self.contexts:
            if ctx.policy is not None:
                await ctx.policy.aclose()  # Redis clients and the like
        await asyncio.sleep(0)


async def run_worker(boot: Bootstrap, settings: Settings) -> int:
    """One process serving every listener; with the admin server unless it is
    one of several workers (the supervisor runs admin then)."""
    loop = asyncio.get_running_loop()
    worker_index = os.environ.get(WORKER_INDEX_ENV)
    ports = _parse_ports(os.environ.get(WORKER_PORTS_ENV, ""))
    metrics = make_metrics(boot)
    rt = Runtime(boot, settings, metrics)
    observer = rt.mesh_observer = MeshObserver.from_bootstrap(boot, metrics)
    rt.observer = observer
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, rt.on_signal, signum)
    security = SidecarSecurity(boot)
    try:
        watcher = watcher_for(boot, rt.apply_snapshot, worker_index)
        rt.mesh = await security.start(boot.snapshot, rt.stop)
        if rt.stop.is_set():
            await security.close()
            return 0
        if rt.mesh is not None:
            metrics.watch_tls_refusals(rt.mesh.refusals.counts)
        await rt.bind(ports)
    except (ConfigError, CertificateError) as exc:
        await security.close()
        log.error("config refused error=%r", str(exc))
        return 1
    except OSError as exc:
        await security.close()
        log.error("bind failed error=%r", str(exc))
        return 1
    observer.watch_upstreams(rt.clusters)
    observer.start(loop)
    rt.start_health_checks()
    admin = None
    if worker_index is None:
        admin = await _start_admin(rt)
    if watcher is not None:  # dynamic mode: ready once a snapshot is in force
        watcher.start()
    if watcher is None or await first_snapshot(watcher, rt.stop):
        rt._ready = True
        _signal_ready()
        log.info("ready pid=%d worker=%s", os.getpid(), worker_index or "-")
    await rt.stop.wait()
    if watcher is not None:
        await watcher.stop()
    await rt.drain()
    await security.close()
    await rt.stop_health_checks()
    await observer.close()
    if admin is not None:
        await admin.close()
    metrics.close()
    log.info("exit pid=%d", os.getpid())
    return 0


async def _start_admin(rt: Runtime) -> AdminServer:
    admin = await start_admin(rt, rt.boot.admin.address, rt.boot.admin.port)
    log.info("admin address=%s port=%d", rt.boot.admin.address, admin.port)
    return admin


def _signal_ready() -> None:
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"r")
            os.close(int(fd))


def _parse_ports(text: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for item in text.split(","):
        name, sep, port = item.rpartition("=")
        if sep and port.isdigit():
            ports[name] = int(port)
    return ports


# -- supervisor (--workers N > 1) ----------------------------------------------


def reserve_ports(listeners: list[Listener]) -> tuple[dict[str, int], list[socket.socket]]:
    """Concrete ports for every listener; port 0 is bound once (not listened)
    and the socket held, so every worker can join it with SO_REUSEPORT."""
    ports: dict[str, int] = {}
    held: list[socket.socket] = []
    for listener in listeners:
        if listener.port:
            ports[listener.name] = listener.port
            continue
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listener.address, 0))
        held.append(sock)
        ports[listener.name] = sock.getsockname()[1]
    return ports, held


class Supervisor:
    def __init__(self, boot: Bootstrap, settings: Settings, config: Path) -> None:
        self.boot = boot
        self.settings = settings
        self.config = config
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.ready_workers: set[int] = set()
        self.all_ready = asyncio.Event()
        self.stopping = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        own_dir = None
        if not os.environ.get(MULTIPROC_ENV):
            own_dir = tempfile.mkdtemp(prefix="meshproxy-metrics-")
            os.environ[MULTIPROC_ENV] = own_dir
        ports, held = reserve_ports(self.boot.listeners)
        self.ports_env = ",".join(f"{name}={port}" for name, port in ports.items())
        rt = Runtime(self.boot, self.settings, make_metrics(self.boot))
        rt.bound = ports
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, rt.on_signal, signum)
        watchers = [asyncio.create_task(self.keep_worker(i)) for i in range(self.settings.workers)]
        admin = await _start_admin(rt)
        stop = asyncio.ensure_future(rt.stop.wait())
        await asyncio.wait(
            [stop, asyncio.ensure_future(self.all_ready.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for listener in self.boot.listeners:
            log.info(
                "listening name=%s protocol=%s address=%s port=%d",
                listener.name,
                listener.protocol,
                listener.address,
                ports[listener.name],
            )
        rt._ready = not rt.stop.is_set()
        log.info("ready pid=%d worker=- workers=%d", os.getpid(), self.settings.workers)
        await rt.stop.wait()
        self.stopping = True
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        _done, pending = await asyncio.wait(watchers, timeout=rt.drain_timeout + 5.0)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if admin is not None:
            await admin.close()
        for sock in held:
            sock.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
        log.info("exit pid=%d", os.getpid())
        return 0

    async def keep_worker(self, index: int) -> None:
        """Run worker ``index``, restarting it whenever it dies unasked."""
        while not self.stopping:
            read_fd, write_fd = os.pipe()
            env = dict(os.environ)
            env[WORKER_INDEX_ENV] = str(index)
            env[WORKER_PORTS_ENV] = self.ports_env
            env[READY_FD_ENV] = str(write_fd)
            env["MESHPROXY_WORKERS"] = "1"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshproxy",
                "run",
                "--config",
                str(self.config),
                env=env,
                pass_fds=(write_fd,),
            )
            os.close(write_fd)
            self.procs[index] = proc
            asyncio.get_running_loop().add_reader(read_fd, self._worker_ready, read_fd, index)
            code = await proc.wait()
            self.ready_workers.discard(index)
            _mark_dead(proc.pid)
            if self.stopping:
                log.info("worker index=%d pid=%d exit=%d", index, proc.pid, code)
                return
            log.warning("worker index=%d pid=%d died exit=%d action=restart", index, proc.pid, code)
            await asyncio.sleep(RESTART_DELAY)

    def _worker_ready(self, fd: int, index: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        try:
            if os.read(fd, 1):  # empty: the worker died before it was ready
                self.ready_workers.add(index)
                if len(self.ready_workers) >= self.settings.workers:
                    self.all_ready.set()
        finally:
            os.close(fd)


def _mark_dead(pid: int) -> None:
    with contextlib.suppress(OSError):
        mark_worker_dead(pid)


def run(boot: Bootstrap, settings: Settings, config: Path) -> int:
    install_uvloop()
    if settings.workers > 1 and os.environ.get(WORKER_INDEX_ENV) is None:
        return asyncio.run(Supervisor(boot, settings, config).run())
    return asyncio.run(run_worker(boot, settings))
