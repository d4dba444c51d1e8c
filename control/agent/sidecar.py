"""An instance's sidecar: its bootstrap and ``meshproxy run`` as a child process.

The bootstrap is dynamic mode (no snapshot of its own; the control plane's), with
one inbound listener on a port the sidecar picks, forwarding to the app, and no
upstreams: the instance only serves.  It is validated with the sidecar's own
bootstrap parser before it is written, so a drift from the schema fails here,
naming the field.  The child process (ports read from its stderr, a bounded
tail of it kept for the crash message) is ``meshproxy.launch``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from meshproxy.config import parse_bootstrap
from meshproxy.launch import Sidecar, SidecarError, start_sidecar

__all__ = ["START_TIMEOUT", "Sidecar", "SidecarError", "bootstrap", "start"]

START_TIMEOUT = 20.0


def bootstrap(
    node_id: str, service: str, control_url: str, token: str, app_port: int, zone: str | None
) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "service": service, "upstreams": []}
    if zone is not None:
        node["zone"] = zone
    config: dict[str, Any] = {
        "node": node,
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1", "port": 0,
             "local_app": f"127.0.0.1:{app_port}"}
        ],
        "control_plane": {"url": control_url, "token": token, "wait": "30s"},
    }  # fmt: skip
    parse_bootstrap(yaml.safe_dump(config), f"sidecar config of {node_id}")
    return config


async def start(config_path: Path, timeout_s: float = START_TIMEOUT) -> Sidecar:
    return await start_sidecar(config_path, ("inbound",), timeout_s)
