"""Route tables: ordered rules, matches, weighted backends, per-rule settings (DESIGN section 3).

Validation that needs one route table only lives here, and every refusal names
the exact field (``routes.0.rules.1.retries.per_try_timeout``), not just the
rule.  Checks that need the rest of the snapshot (services and subsets that
must exist, hosts claimed twice) live in ``meshproxy.routing`` where the table
is compiled.  Nothing here runs per request.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from meshproxy.config.base import Model
from meshproxy.config.types import Duration

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Field values may not carry CR, LF, NUL or other controls: a rule must never
# be able to inject a header line or split a message.
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\U0010ffff]*$")
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# Headers that frame the message or belong to one hop: rewriting them from a
# route could desynchronise the proxy and the upstream (request smuggling).
FORBIDDEN_HEADER_OPS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

Percent = Annotated[float, Field(ge=0, le=100)]
StatusCode = Annotated[int, Field(ge=100, le=599)]


def refuse(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """A validation error at ``loc`` below the model being validated, so that a
    model validator can name the exact field that is wrong."""
    return ValidationError.from_exception_data(
        "route",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", message),
                loc=loc,
                input=value,
            )
        ],
    )


def _check_token(name: str, what: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{what} {name!r} is not a valid HTTP token")
    return name


class StringMatch(Model):
    """One condition on a string.  ``exact`` and ``prefix`` compare bytes;
    ``regex`` must match the whole value; ``present: false`` means absent."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value.encode())
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> StringMatch:
        kinds = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of exact, prefix, regex, present")
        return self


class Match(Model):
    """One match block: every key given must hold (AND); blocks of a rule are OR."""

    path: StringMatch | None = None
    method: str | None = None
    headers: dict[str, StringMatch] = {}
    query_params: dict[str, StringMatch] = {}

    @field_validator("method")
    @classmethod
    def _method_token(cls, value: str | None) -> str | None:
        return None if value is None else _check_token(value, "method")

    @field_validator("headers")
    @classmethod
    def _header_tokens(cls, value: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name in value:
            _check_token(name, "header name")
        return value

    @model_validator(mode="after")
    def _path_shape(self) -> Match:
        path = self.path
        if path is None:
            return self
        if path.present is not None:
            raise refuse(("path", "present"), "a request always has a path", path.present)
        for kind in ("exact", "prefix"):
            text = getattr(path, kind)
            if text is not None and not text.startswith("/"):
                raise refuse(("path", kind), "a path starts with '/'", text)
        return self


class Backend(Model):
    """A weighted destination: a subset of ``service`` (default: the route's)."""

    subset: str | None = None
    service: str | None = None
    # Relative, as the Gateway API: 0 sends nothing, the bound keeps sums exact.
    weight: int = Field(default=1, ge=0, le=1_000_000)


class HashOn(Model):
    """Where the split key comes from; absent, each request is split at random."""

    header: str | None = None
    cookie: str | None = None
    client_address: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HashOn:
        given = [k for k in ("header", "cookie", "client_address") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of header, cookie, client_address: true")
        if self.header is not None:
            _check_token(self.header, "header name")
        return self


class Backoff(Model):
    """Exponential backoff with full jitter between retries (Envoy's defaults)."""

    base: Duration = 0.025
    max: Duration | None = None  # None: ten times ``base``

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.base <= 0:
            raise refuse(("base",), "the backoff base must be above zero", self.base)
        if self.max is not None and self.max < self.base:
            raise refuse(("max",), "the backoff max must not be below its base", self.max)
        return self


RetryOn = Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes"]


class Retries(Model):
    """``attempts`` counts retries after the first try (Istio's meaning)."""

    attempts: int = Field(default=1, ge=0, le=10)
    per_try_timeout: Duration | None = None
    retry_on: list[RetryOn] = ["connect-failure"]
    retriable_status_codes: list[StatusCode] = []
    backoff: Backoff = Backoff()
    # Retry even when a non-idempotent request may have reached the upstream.
    retry_non_idempotent: bool = False

    @model_validator(mode="after")
    def _codes_listed(self) -> Retries:
        wants_codes = "retriable-status-codes" in self.retry_on
        if wants_codes and not self.retriable_status_codes:
            raise refuse(
                ("retriable_status_codes",),
                "retry_on names retriable-status-codes but no code is listed",
                self.retriable_status_codes,
            )
        if self.retriable_status_codes and not wants_codes:
            raise refuse(
                ("retry_on",),
                "retriable_status_codes are listed: add 'retriable-status-codes' to retry_on",
                self.retry_on,
            )
        return self


class HeaderOps(Model):
    """Applied in this order: ``remove``, then ``set`` (replaces), then ``add``."""

    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []

    @model_validator(mode="after")
    def _valid_fields(self) -> HeaderOps:
        for op in ("set", "add"):
            for name, value in getattr(self, op).items():
                self._check_name(op, name)
                if not _FIELD_VALUE.match(value) or value != value.strip(" \t"):
                    raise refuse(
                        (op, name),
                        "a header value may not hold control characters or surrounding blanks",
                        value,
                    )
        for i, name in enumerate(self.remove):
            self._check_name("remove", name, i)
        return self

    @staticmethod
    def _check_name(op: str, name: str, index: int | None = None) -> None:
        loc: tuple[str | int, ...] = (op, name) if index is None else (op, index)
        if not _TOKEN.match(name):
            raise refuse(loc, f"header name {name!r} is not a valid HTTP token", name)
        if name.lower() in FORBIDDEN_HEADER_OPS:
            hint = " (use rewrite.host)" if name.lower() == "host" else ""
            raise refuse(
                loc, f"header {name!r} frames the message: it cannot be changed{hint}", name
            )


class Headers(Model):
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


class Rewrite(Model):
    """``prefix`` replaces the path prefix that matched; ``host`` the Host header."""

    prefix: str | None = None
    host: str | None = None

    @field_validator("prefix")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or not _FIELD_VALUE.match(value)):
            raise ValueError("a path prefix starts with '/' and has no control characters")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_PORT.match(value):
            raise ValueError(f"{value!r} is not a host or host:port")
        return value


class Mirror(Model):
    """Copy a share of the requests to another subset or service; answers are dropped."""

    subset: str | None = None
    service: str | None = None
    percent: Percent = 100.0

    @model_validator(mode="after")
    def _target(self) -> Mirror:
        if self.subset is None and self.service is None:
            raise ValueError("a mirror needs a subset, a service, or both")
        return self


class Delay(Model):
    fixed: Duration
    percent: Percent = 100.0


class Abort(Model):
    status: StatusCode
    percent: Percent = 100.0


class Fault(Model):
    """Injected faults.  A rule with faults is never retried (as in Istio)."""

    delay: Delay | None = None
    abort: Abort | None = None

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs a delay, an abort, or both")
        return self


class Rule(Model):
    match: list[Match] = []  # no block: every request
    backends: list[Backend] = []  # none: every endpoint of the route's service
    hash_on: HashOn | None = None
    timeout: Duration | None = None  # the whole request, retries included
    retries: Retries | None = None
    headers: Headers | None = None
    rewrite: Rewrite | None = None
    mirror: Mirror | None = None
    fault: Fault | None = None

    @field_validator("backends")
    @classmethod
    def _some_weight(cls, value: list[Backend]) -> list[Backend]:
        if value and not any(b.weight for b in value):
            raise ValueError("all weights are zero: the rule could send no traffic")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        retries = self.retries
        if (
            retries is not None
            and retries.per_try_timeout is not None
            and self.timeout is not None
            and retries.per_try_timeout > self.timeout
        ):
            raise refuse(
                ("retries", "per_try_timeout"),
                "the per-try timeout is longer than the route timeout",
                retries.per_try_timeout,
            )
        if self.rewrite is not None and self.rewrite.prefix is not None:
            for i, block in enumerate(self.match):
                if block.path is not None and block.path.regex is not None:
                    raise refuse(
                        ("match", i, "path", "regex"),
                        "a prefix rewrite needs prefix or exact path matches, not a regex",
                        block.path.regex,
                    )
        return self


class RouteTable(Model):
    """The rules for one service.  ``hosts`` (exact names or ``*.suffix``)
    restricts the table to requests for those hosts; none means any host."""

    service: str
    hosts: list[str] = []
    rules: list[Rule] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST.match(host):
                raise ValueError(f"{host!r} is not a lower-case host name or '*.suffix'")
        return value

    @model_validator(mode="after")
    def _distinct_backends(self) -> RouteTable:
        for r, rule in enumerate(self.rules):
            seen: dict[tuple[str, str | None], int] = {}
            for b, backend in enumerate(rule.backends):
                key = (backend.service or self.service, backend.subset)
                if key in seen:
                    raise refuse(
                        ("rules", r, "backends", b),
                        f"duplicate of backends.{seen[key]}: each destination appears once",
                        backend.model_dump(exclude_defaults=True),
                    )
                seen[key] = b
        return self
