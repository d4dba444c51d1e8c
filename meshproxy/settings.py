"""Process settings that are not part of the mesh config: where the config is,
how many workers, log level, drain deadline.

Read from the environment (``MESHPROXY_CONFIG``, ``MESHPROXY_WORKERS``,
``MESHPROXY_LOG_LEVEL``, ``MESHPROXY_DRAIN_TIMEOUT``); command-line flags
override them (``cli`` passes them as init arguments, which pydantic-settings
ranks above the environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHPROXY_", extra="ignore")

    config: Path | None = None
    workers: int = Field(default=1, ge=1, le=256)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Overrides the bootstrap's drain_timeout when set (seconds).
    drain_timeout: float | None = Field(default=None, ge=0)
