"""Filter config models: user filters named in a snapshot, and the built-in JWT filter.

A ``FilterRef`` names a filter class by entry point (``name``, group
``meshproxy.filters``) or by dotted path (``path: "pkg.mod:Class"``) and carries
its ``config``, which the class's own pydantic model validates when the
snapshot is validated: a bad config refuses the snapshot, and the error names
the field below ``config``.  Loading the class imports user code; nothing here
runs per request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from meshproxy.config.base import Model
from meshproxy.config.types import Duration

# Asymmetric algorithms only: a shared secret in a JWKS meant for verifiers
# would let every verifier mint tokens.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


def _refuse(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    return ValidationError.from_exception_data(
        "filter",
        [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)],
    )


class FilterRef(Model):
    """One user (or built-in) filter in the chain."""

    name: str | None = None  # an entry point of group meshproxy.filters, or a built-in
    path: str | None = None  # "package.module:Class"
    config: dict[str, Any] = {}
    direction: Literal["inbound", "outbound", "both"] = "both"
    # What a request gets when the filter raises: deny = 500, allow = passed on.
    on_error: Literal["deny", "allow"] = "deny"

    @model_validator(mode="after")
    def _resolve(self) -> FilterRef:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of name (entry point) or path (module:Class)")
        # Imported here: the policy room depends on config, not the other way round.
        from meshproxy.policy.plugins import PluginError, filter_config, load_filter_class

        try:
            cls = load_filter_class(self.name, self.path)
        except PluginError as exc:
            raise _refuse(("name" if self.name is not None else "path",), str(exc), None) from None
        try:
            filter_config(cls, self.config)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                "filter",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", err["msg"]),
                        loc=("config", *err["loc"]),
                        input=err["input"],
                    )
                    for err in exc.errors()
                ],
            ) from None
        except PluginError as exc:
            raise _refuse(("config",), str(exc), self.config) from None
        return self


class JwtConfig(Model):
    """The built-in ``jwt`` filter: who may issue tokens and where their keys are."""

    issuer: str
    audiences: list[str] = []  # empty: the aud claim is not checked
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwks_refresh: Duration = 300.0  # how long fetched keys are trusted before a refresh
    jwks_timeout: Duration = 2.0
    clock_skew: Duration = 60.0
    algorithms: list[str] = list(JWT_ALGORITHMS)
    header: str = "authorization"  # "Bearer <token>"
    require_token: bool = True  # False: a request without a token passes, with no claims
    require_exp: bool = True

    @model_validator(mode="after")
    def _sane(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file or jwks_url")
        if self.jwks_url is not None and not self.jwks_url.startswith(("http://", "https://")):
            raise ValueError("jwks_url must be an http:// or https:// URL")
        bad = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(
                f"algorithms must be a non-empty subset of {', '.join(JWT_ALGORITHMS)}"
            )
        if self.jwks_refresh <= 0 or self.jwks_timeout <= 0:
            raise ValueError("jwks_refresh and jwks_timeout must be positive")
        return self


class RedisTarget(Model):
    """Where a global rate limit keeps its counters."""

    url: str = "redis://127.0.0.1:6379/0"
    timeout: Duration = 0.05  # per command; a slow Redis must not slow every request
    retry_after_error: Duration = 0.5  # after a failure, decide without Redis this long
    prefix: str = "meshproxy:rl:"

    @model_validator(mode="after")
    def _sane(self) -> RedisTarget:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must be redis://, rediss:// or unix://")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        return self


__all__ = ["JWT_ALGORITHMS", "FilterRef", "JwtConfig", "RedisTarget"]
