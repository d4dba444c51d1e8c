"""Access policies: who may call a service, with which methods, paths and headers.

Evaluated in Istio's order by ``meshproxy.policy.authz``: any matching DENY
policy denies; with no ALLOW policy the request is allowed; a matching ALLOW
allows; otherwise it is denied.  Within a policy the rules are OR; within a
rule ``from``, ``to`` and every ``when`` condition must all match, and each
list inside them matches when any of its entries does (empty: anything).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshproxy.config.base import Model


class AccessSource(Model):
    services: list[str] = []  # the caller's service: its principal's last path segment
    principals: list[str] = []  # the peer identity (mTLS), else principal_header's value
    addresses: list[str] = []  # client addresses or CIDR blocks


class AccessTarget(Model):
    methods: list[str] = []
    # "/exact", "/prefix/*" (prefix), or a glob: "*" within one segment, "**" across
    paths: list[str] = []


class AccessCondition(Model):
    """A header of the request or a claim of its verified JWT must have one of
    ``values`` ("*": present at all; a trailing "*": prefix) and none of
    ``not_values``."""

    header: str | None = None
    claim: str | None = None
    values: list[str] = []
    not_values: list[str] = []

    @model_validator(mode="after")
    def _one_source(self) -> AccessCondition:
        if (self.header is None) == (self.claim is None):
            raise ValueError("give exactly one of header or claim")
        if not self.values and not self.not_values:
            raise ValueError("give values or not_values")
        return self


class AccessRule(Model):
    from_: AccessSource | None = Field(default=None, alias="from")
    to: AccessTarget | None = None
    when: list[AccessCondition] = []


class Access(Model):
    service: str
    action: Literal["allow", "deny"]
    rules: list[AccessRule] = []
    # Until mTLS gives a peer identity: the request header that names the
    # caller (trusted only behind the mesh); absent, the client address.
    principal_header: str | None = None
