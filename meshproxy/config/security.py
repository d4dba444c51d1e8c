"""Mesh TLS settings: the sidecar's workload identity and the per-service mTLS mode.

``Security`` sits in the bootstrap (who this sidecar is, where its certificate
comes from); ``ServiceTLS`` sits in a service policy (how that service's
inbound side treats plaintext).  Models only: the contexts, handshakes and
renewals that act on them live in ``meshproxy.security``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from meshproxy.config.base import Model
from meshproxy.config.types import Duration

# disable: plaintext only; permissive: mTLS or plaintext (migration);
# strict: mTLS only, a plaintext client is refused at the first byte.
TLSMode = Literal["disable", "permissive", "strict"]


class ServiceTLS(Model):
    mode: TLSMode | None = None  # None: the mesh-wide ``security.mode``


class Security(Model):
    mode: TLSMode = "disable"
    trust_domain: str = Field(default="cluster.local", pattern=r"^[a-z0-9._-]{1,255}$")
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,253}$")
    # Where the certificate comes from: the control plane's CA (``ca_url``, the
    # control plane's own URL when absent) with a bootstrap token, or files.
    ca_url: str | None = None
    bootstrap_token: SecretStr | None = None
    bootstrap_token_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    bundle_file: Path | None = None
    renew_fraction: float = Field(default=2 / 3, gt=0, lt=1)
    bundle_refresh: Duration = 60.0
    handshake_timeout: Duration = 5.0

    @model_validator(mode="after")
    def _one_source(self) -> Security:
        files = [self.cert_file, self.key_file, self.bundle_file]
        if any(f is not None for f in files) and not all(f is not None for f in files):
            raise ValueError("cert_file, key_file and bundle_file go together")
        if self.bootstrap_token is not None and self.bootstrap_token_file is not None:
            raise ValueError("give bootstrap_token or bootstrap_token_file, not both")
        if self.bundle_refresh <= 0 or self.handshake_timeout <= 0:
            raise ValueError("bundle_refresh and handshake_timeout must be positive")
        return self
