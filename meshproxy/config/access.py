"""Access policies: who may call a service, with which methods and paths."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshproxy.config.base import Model


class AccessSource(Model):
    services: list[str] = []
    principals: list[str] = []
    addresses: list[str] = []


class AccessTarget(Model):
    methods: list[str] = []
    paths: list[str] = []


class AccessRule(Model):
    from_: AccessSource | None = Field(default=None, alias="from")
    to: AccessTarget | None = None


class Access(Model):
    service: str
    action: Literal["allow", "deny"]
    rules: list[AccessRule] = []
