"""The identity's life in a sidecar worker: obtain it before the listeners
bind, keep it renewed while the worker runs, stop on drain.

How this works.  ``SidecarSecurity.start`` reads the bootstrap's ``security``
block.  With no identity source (no bootstrap token, no certificate files)
security is off and the data path runs plaintext (a ``mode`` other than
``disable`` without a source is refused at start).  With files, the material is
loaded once.  With the control plane's CA, the first certificate is fetched
before anything binds (retrying with backoff until it comes or the worker is
told to stop), so ``/ready`` is never true without an identity; then
``IdentityManager.run`` renews it and follows the trust bundle in one task.
The result is the ``MeshTLS`` the runtime hands to the listeners.

It must not bind sockets or know the HTTP protocol: the runtime does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from meshproxy.config.bootstrap import Bootstrap
from meshproxy.config.snapshot import Snapshot
from meshproxy.security.contexts import TLSContexts
from meshproxy.security.identity import IdentityManager
from meshproxy.security.mesh import (
    MeshTLS,
    bootstrap_token,
    files_material,
    identity_of,
    manager_for,
)
from meshproxy.security.x509 import CertificateError

log = logging.getLogger("meshproxy.security")
FIRST_RETRY = 0.2
MAX_RETRY = 5.0


def security_enabled(boot: Bootstrap) -> bool:
    """True when the bootstrap gives the sidecar a way to an identity;
    ``CertificateError`` when it asks for TLS without one."""
    sec = boot.security
    has_source = sec.cert_file is not None or bootstrap_token(sec) is not None
    if not has_source and sec.mode != "disable":
        raise CertificateError(
            f"security.mode is {sec.mode} but no identity source is configured "
            "(bootstrap_token / bootstrap_token_file, or cert_file, key_file, bundle_file)"
        )
    return has_source


class SidecarSecurity:
    def __init__(self, boot: Bootstrap) -> None:
        self.boot = boot
        self.mesh: MeshTLS | None = None
        self.manager: IdentityManager | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, snapshot: Snapshot, stop: asyncio.Event) -> MeshTLS | None:
        """The mesh TLS to serve with (None: security off), once an identity is
        in hand; None as well when ``stop`` is set first (the caller checks it)."""
        boot = self.boot
        if not security_enabled(boot):
            return None
        material = files_material(boot.security)
        if material is not None:
            contexts = TLSContexts(material)
            if material.info.identity != identity_of(boot):
                log.warning(
                    "certificate identity %s differs from this node's %s",
                    material.info.identity,
                    identity_of(boot),
                )
            identity = material.info.identity
        else:
            self._session = aiohttp.ClientSession()
            manager = self.manager = manager_for(boot, self._session)
            delay = FIRST_RETRY
            while not await manager.renew():
                if stop.is_set():
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(MAX_RETRY, delay * 2)
            assert manager.contexts is not None
            contexts = manager.contexts
            identity = manager.identity
            self._task = asyncio.get_running_loop().create_task(manager.run())
        self.mesh = MeshTLS(boot.security, identity, contexts, snapshot)
        info = contexts.material.info
        log.info(
            "identity spiffe_id=%s serial=%s expires=%.0f", identity, info.serial, info.not_after
        )
        return self.mesh

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()
