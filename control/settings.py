"""Settings of ``meshcontrol run``, from the environment (``MESHCONTROL_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHCONTROL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=15010, ge=0, le=65535)
    data_dir: Path = Path("meshcontrol-data")
    admin_token: str = Field(default="", description="bearer token with write scope")
    read_token: str = Field(default="", description="bearer token with read scope")
    store: Literal["sqlite", "consul"] = "sqlite"
    registry: Literal["local", "consul"] = Field(
        default="local", description="consul: also follow the Consul catalog"
    )
    consul_http_addr: str = Field(
        default="127.0.0.1:8500",
        validation_alias=AliasChoices("MESHCONTROL_CONSUL_HTTP_ADDR", "CONSUL_HTTP_ADDR"),
    )
    consul_http_token: str = Field(
        default="",
        validation_alias=AliasChoices("MESHCONTROL_CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"),
    )
    consul_prefix: str = Field(default="meshproxy", pattern=r"^[A-Za-z0-9._/-]+$")
    restart_grace: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="after a start with stored service specs, seconds to wait for the "
        "agents to register again (with what they run) before scaling",
    )
    tick: float = Field(default=0.2, gt=0, le=5, description="seconds between TTL/check scans")
