"""Scalar types shared by the bootstrap and snapshot models: durations, host:port."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """``250ms``, ``2s``, ``1.5m``, ``1h`` -> seconds.  Bare numbers are refused so
    that ``timeout: 2`` cannot silently mean two seconds or two milliseconds."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError("a duration needs a unit, e.g. '250ms', '2s', '1m'")
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as '250ms', '2s' or '1m'")
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m or h")
    return float(match.group(1)) * _UNIT[match.group(2)]


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


def parse_host_port(value: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` or ``[::1]:8080`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _check_host_port(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a 'host:port' string")
    parse_host_port(value)
    return value


HostPort = Annotated[str, BeforeValidator(_check_host_port)]
