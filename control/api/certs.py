"""The CA's endpoints: sign a sidecar's CSR, publish the trust bundle, rotate the root.

``POST /v1/certificates`` is authenticated by a *bootstrap token*, not by the
operators' bearer tokens: each token (``MESHCONTROL_CA_BOOTSTRAP_TOKENS``, a
JSON object) grants the identities it may claim, ``"namespace/service"`` or
``"namespace/*"``.  Every configured token is compared in constant time.  The
identity is decided here, from the body's namespace and service and the
token's grant; the CSR only brings the public key.

The CA is kept in the app (``CA_KEY``); handlers call ``advance`` first, so a
due root switch or retirement happens on the next request and is saved.
The handlers are registered through ``OPERATIONS`` in ``routes.py``.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control.api.auth import AuthError, Principal
from control.api.models import ErrorBody
from control.ca import CADirectory, CAError, CASettings, CertificateAuthority
from control.service import ControlPlane
from control.state import StateError, pydantic_problems
from meshproxy.security.spiffe import IdentityError, SpiffeId


@dataclass
class CAState:
    ca: CertificateAuthority
    directory: CADirectory
    settings: CASettings
    clock: Callable[[], float] = field(default=time.time)

    def advance(self) -> float:
        now = self.clock()
        if self.ca.advance(now):
            self.directory.save(self.ca)
        return now


CA_KEY: web.AppKey[CAState] = web.AppKey("ca", CAState)


def install_ca(app: web.Application, data_dir: Path, settings: CASettings | None = None) -> None:
    """Load the CA (making a root at first start) into ``app``."""
    chosen = settings or CASettings()
    directory = CADirectory(chosen.dir or data_dir / "ca", chosen)
    app[CA_KEY] = CAState(directory.load_or_create(time.time()), directory, chosen)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CertificateRequest(_Body):
    csr: str = Field(max_length=16384, description="PEM PKCS#10, EC P-256/P-384 or RSA 2048+")
    namespace: str = Field(default="default", min_length=1, max_length=253)
    service: str = Field(min_length=1, max_length=253)


class CertificateIssued(_Body):
    spiffe_id: str
    serial: str
    not_before: float
    not_after: float
    certificate_chain: str = Field(description="PEM, the SVID first")
    trust_bundle: str = Field(description="PEM roots to trust now")


class TrustBundle(_Body):
    trust_domain: str
    trust_bundle: str
    roots: int


class RotationStarted(_Body):
    activate_at: float = Field(description="when the new root starts signing (epoch seconds)")
    trust_bundle: str


def _bad_body(message: str) -> web.Response:
    return web.json_response(ErrorBody(error=message).model_dump(mode="json"), status=400)


def _grant(settings: CASettings, authorization: str | None) -> str:
    kind, _, token = (authorization or "").partition(" ")
    given = token.strip().encode()
    found = None
    for secret, grant in settings.bootstrap_tokens.items():
        if hmac.compare_digest(given, secret.encode()) and kind.lower() == "bearer":
            found = found or grant
    if not given or found is None:
        raise AuthError(401, "a valid bootstrap token is required")
    return found


def _may_claim(grant: str, identity: SpiffeId) -> bool:
    namespace, _, service = grant.partition("/")
    return namespace == identity.namespace and service in ("*", identity.service)


async def issue_certificate(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    state = request.app[CA_KEY]
    grant = _grant(state.settings, request.headers.get("Authorization"))
    try:
        body = CertificateRequest.model_validate(json.loads(await request.text()))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            raise StateError(pydantic_problems(exc)) from None
        return _bad_body(f"the body is not JSON: {exc}")
    try:
        identity = SpiffeId.of(state.ca.trust_domain, body.namespace, body.service)
    except IdentityError as exc:
        raise StateError([("service", str(exc))]) from None
    if not _may_claim(grant, identity):
        raise AuthError(403, f"this bootstrap token may not claim {identity}")
    now = state.advance()
    try:
        issued = state.ca.sign(body.csr.encode(), identity, now)
    except CAError as exc:
        raise StateError([("csr", str(exc))]) from None
    return web.json_response(
        CertificateIssued(
            spiffe_id=identity.uri,
            serial=issued.info.serial,
            not_before=issued.info.not_before,
            not_after=issued.info.not_after,
            certificate_chain=issued.chain.decode(),
            trust_bundle=state.ca.trust_bundle(now).decode(),
        ).model_dump(mode="json")
    )


async def trust_bundle(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    state = request.app[CA_KEY]
    now = state.advance()
    roots = state.ca.trusted_roots(now)
    body = TrustBundle(
        trust_domain=state.ca.trust_domain,
        trust_bundle=state.ca.trust_bundle(now).decode(),
        roots=len(roots),
    )
    return web.json_response(body.model_dump(mode="json"))


async def rotate_root(request: web.Request, cp: ControlPlane, who: Principal) -> web.Response:
    state = request.app[CA_KEY]
    now = state.advance()
    try:
        pending = state.ca.begin_rotation(now, state.settings.publish_delay, state.settings)
    except CAError as exc:
        return web.json_response(ErrorBody(error=str(exc)).model_dump(mode="json"), status=409)
    state.directory.save(state.ca)
    body = RotationStarted(
        activate_at=pending.activate_at, trust_bundle=state.ca.trust_bundle(now).decode()
    )
    return web.json_response(body.model_dump(mode="json"))
