"""The TLS edges of a connection: accept (STRICT or PERMISSIVE) and originate mTLS.

How this works.

Inbound, ``InboundListener`` accepts sockets itself instead of handing them to
``loop.create_server``, because it must look at the first byte before anyone
reads it: a TLS connection starts with a handshake record (0x16).  It waits
for the socket to be readable, peeks one byte (``MSG_PEEK`` leaves it in the
kernel), then

* 0x16: ``loop.connect_accepted_socket(ssl=contexts.server)``, the loop's own
  TLS (uvloop's is C), with the server context current *now*, so a rotated
  certificate serves every connection accepted after ``TLSContexts.update``;
* anything else: plaintext, given to the application unwrapped on a
  PERMISSIVE port, refused (``plaintext_on_strict``) on a STRICT one.

While the mode is ``disable`` every connection goes to the application
unwrapped, TLS or not (it answers a ClientHello as the garbage it then is).

After the handshake the peer's SPIFFE ID is read from the verified certificate
(``ssl`` checks the chain and dates, not URI SANs) and checked; until then the
connection sits in a ``_Gate`` protocol that reads nothing, so the
application's protocol never sees a byte from an unverified peer.  It then
gets ``connection_made`` with the transport, and the identity through
``app_factory(peer)``.

Outbound, ``connect_mtls`` opens a connection with the current client
context, gates it the same way and refuses it unless the server's SPIFFE ID is
the one expected for the service the caller meant to reach.  ``open_to``
chooses between it and a plaintext ``create_connection`` by the service's
mode, for the side traffic (mirrors, health checks, L4 listeners) that opens
its own connections; the HTTP data path makes the same choice once per pooled
connection key.

Every refusal is counted and logged by ``Refusals`` with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from meshproxy.config.security import TLSMode
from meshproxy.security.contexts import TLSContexts
from meshproxy.security.refusals import Refusals, TLSRefused, classify
from meshproxy.security.spiffe import IdentityError, SpiffeId, peer_identity

if TYPE_CHECKING:
    from meshproxy.security.mesh import MeshTLS

TLS_HANDSHAKE_RECORD = 0x16
AppFactory = Callable[[SpiffeId | None], asyncio.Protocol]
P = TypeVar("P", bound=asyncio.Protocol)


class _Gate(asyncio.Protocol):
    """Holds a fresh connection, reading nothing, until its peer is checked."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.held: list[bytes] = []
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.held.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def hand_over(self, app: asyncio.Protocol) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_protocol(app)
        app.connection_made(transport)
        for data in self.held:
            app.data_received(data)
        self.held.clear()
        if self.eof and not app.eof_received():
            transport.close()
        if not transport.is_closing():
            transport.resume_reading()


def verified_peer(transport: asyncio.BaseTransport) -> SpiffeId:
    """The SPIFFE ID of the peer of a TLS transport whose handshake verified
    its chain; ``TLSRefused`` when it carries no valid one."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        raise TLSRefused("handshake_failed", "not a TLS connection")
    try:
        return peer_identity(ssl_object.getpeercert())
    except IdentityError as exc:
        raise TLSRefused("no_spiffe_id", str(exc)) from None


async def _first_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """Wait for and peek the first byte without consuming it (b"": closed)."""
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())


class InboundListener:
    """An inbound mTLS listener.  ``mode_of()`` is read per connection, so a new
    snapshot's mode applies from the next connection on."""

    def __init__(
        self,
        contexts: TLSContexts,
        mode_of: Callable[[], TLSMode],
        app_factory: AppFactory,
        refusals: Refusals,
        trust_domain: str,
        handshake_timeout: float = 5.0,
    ) -> None:
        self.contexts = contexts
        self.mode_of = mode_of
        self.app_factory = app_factory
        self.refusals = refusals
        self.trust_domain = trust_domain
        self.handshake_timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._sock is not None
        port: int = self._sock.getsockname()[1]
        return port

    async def start(
        self, host: str, port: int, backlog: int = 1024, reuse_port: bool = False
    ) -> None:
        """Bind and accept; ``reuse_port`` lets several workers share the port
        (the kernel spreads connections), as ``loop.create_server`` does."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(sock))

    async def close(self) -> None:
        """Stop accepting and abandon handshakes in progress; connections
        already handed to the application are the application's to close."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError:  # EMFILE and friends: back off instead of spinning
                await asyncio.sleep(0.05)
                continue
            task = asyncio.create_task(self._admit(sock, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _admit(self, sock: socket.socket, address: object) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handed = False
        try:
            async with asyncio.timeout(self.handshake_timeout):
                first = await _first_byte(loop, sock)
                if not first:
                    return  # closed before a byte: a port probe, nothing to refuse
                mode = self.mode_of()
                if first[0] != TLS_HANDSHAKE_RECORD or mode == "disable":
                    if mode == "strict":
                        raise TLSRefused("plaintext_on_strict", f"first byte {first!r}")
                    await loop.connect_accepted_socket(lambda: self.app_factory(None), sock)
                    handed = True
                    return
                # The gate is made here, not read from the result: uvloop
                # returns its own SSL protocol there instead of ours.
                gate = _Gate()
                transport, _ = await loop.connect_accepted_socket(
                    lambda: gate,
                    sock,
                    ssl=self.contexts.server,
                    ssl_handshake_timeout=self.handshake_timeout + 1.0,
                )
            handed = True  # the transport owns the socket from here
            try:
                peer = verified_peer(transport)
                if peer.trust_domain != self.trust_domain:
                    raise TLSRefused("wrong_spiffe_id", f"{peer} is not in {self.trust_domain}")
            except TLSRefused:
                transport.abort()
                raise
            if not gate.lost:
                gate.hand_over(self.app_factory(peer))
        except (TLSRefused, TimeoutError, OSError) as exc:
            reason, detail = classify(exc)
            self.refusals.record("inbound", reason, address, detail)
        finally:
            if not handed:
                sock.close()


async def connect_mtls(
    app_factory: Callable[[], P],
    host: str,
    port: int,
    contexts: TLSContexts,
    expected: SpiffeId,
    refusals: Refusals,
    handshake_timeout: float = 5.0,
) -> tuple[asyncio.Transport, P]:
    """Open mTLS to ``host:port`` and return the application's protocol on it,
    or raise ``TLSRefused`` (counted) unless the server is ``expected``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(handshake_timeout):
            gate = _Gate()
            transport, _ = await loop.create_connection(
                lambda: gate,
                host,
                port,
                ssl=contexts.client,
                ssl_handshake_timeout=handshake_timeout + 1.0,
            )
        try:
            peer = verified_peer(transport)
            if peer != expected:
                raise TLSRefused("wrong_spiffe_id", f"expected {expected}, the server is {peer}")
        except TLSRefused:
            transport.abort()
            raise
    except (ConnectionRefusedError, socket.gaierror):
        raise  # no TLS was attempted: the caller's connect-failure handling applies
    except (TLSRefused, TimeoutError, OSError) as exc:
        reason, detail = classify(exc)
        refusals.record("outbound", reason, f"{host}:{port}", detail)
        if isinstance(exc, TLSRefused):
            raise
        raise TLSRefused(reason, detail) from exc
    app = app_factory()
    gate.hand_over(app)
    return transport, app


def open_to(
    service: str,
    mtls: MeshTLS | None,
    app_factory: Callable[[], P],
    host: str,
    port: int,
    handshake_timeout: float,
) -> Coroutine[Any, Any, tuple[asyncio.Transport, P]]:
    """A connection to ``host:port``, an endpoint of ``service``: mTLS checked
    against the service's SPIFFE ID when the mesh turns TLS on for it (as the
    HTTP data path does), plaintext otherwise (and when security is off)."""
    expected = mtls.expected.get(service) if mtls is not None else None
    if mtls is None or expected is None:
        return asyncio.get_running_loop().create_connection(app_factory, host, port)
    return connect_mtls(
        app_factory, host, port, mtls.contexts, expected, mtls.refusals, handshake_timeout
    )
