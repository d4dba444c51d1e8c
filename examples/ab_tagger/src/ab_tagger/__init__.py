"""A/B tagging for meshproxy: a caller lands in bucket "a" or "b", always the same one.

The bucket comes from a hash of a request header (``x-user`` by default;
the client address when it is absent), so one user sees one variant across
requests and sidecars.  The filter adds ``x-ab-bucket`` to the request sent
upstream (the service or a route can act on it) and to the response.

It is an example of a meshproxy filter: a plain class with a pydantic
``Config`` model and ``on_request`` / ``on_response`` hooks.
"""

from __future__ import annotations

import zlib

from pydantic import BaseModel, ConfigDict, Field

from meshproxy.policy import RequestContext


class AbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key_header: str = "x-user"
    percent_b: int = Field(default=50, ge=0, le=100)
    tag_header: str = "x-ab-bucket"
    salt: str = ""  # change it to reshuffle everyone


class AbTagger:
    Config = AbConfig

    def __init__(self, config: AbConfig) -> None:
        self.config = config
        self._key = config.key_header.lower().encode("latin-1")
        self._tag = config.tag_header.lower().encode("latin-1")
        self._salt = config.salt.encode()

    def bucket(self, key: bytes) -> bytes:
        return b"b" if zlib.crc32(self._salt + key) % 100 < self.config.percent_b else b"a"

    def on_request(self, ctx: RequestContext) -> None:
        key = ctx.header(self._key)
        bucket = self.bucket(key if key is not None else ctx.client_ip.encode())
        ctx.scratch["ab_bucket"] = bucket
        ctx.add_request_header(self._tag, bucket)

    def on_response(self, ctx: RequestContext) -> None:
        bucket = ctx.scratch.get("ab_bucket")
        if bucket is not None:
            ctx.add_response_header(self._tag, bucket)
