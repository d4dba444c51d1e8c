"""Route tables: ordered rules, matches, weighted backends, per-rule settings (DESIGN section 3).

Validation of a single rule lives here; checks that need the whole snapshot
(subsets that must exist, for instance) live in ``snapshot.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshproxy.config.base import Model
from meshproxy.config.types import Duration


class StringMatch(Model):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StringMatch:
        kinds = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of exact, prefix, regex, present")
        return self


class Match(Model):
    path: StringMatch | None = None
    method: str | None = None
    headers: dict[str, StringMatch] = {}
    query_params: dict[str, StringMatch] = {}


class Backend(Model):
    subset: str | None = None
    service: str | None = None
    weight: int = Field(default=1, ge=0)


class HashOn(Model):
    header: str | None = None
    cookie: str | None = None
    client_address: bool | None = None


class Retries(Model):
    attempts: int = Field(default=1, ge=0, le=10)
    per_try_timeout: Duration | None = None
    retry_on: list[
        Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes"]
    ] = ["connect-failure"]


class Rule(Model):
    match: list[Match] = []
    backends: list[Backend] = []
    hash_on: HashOn | None = None
    timeout: Duration | None = None
    retries: Retries | None = None


class RouteTable(Model):
    service: str
    hosts: list[str] = []
    rules: list[Rule]
