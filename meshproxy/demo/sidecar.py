"""The demo's sidecar: its config; the child process is ``meshproxy.launch``'s.

The config is a plain dict validated by the real bootstrap models before it is
written, so a demo that drifts from the schema fails here with the field
named, not inside the sidecar.
"""

from __future__ import annotations

import socket
from typing import Any

import yaml

from meshproxy.config import parse_bootstrap
from meshproxy.demo.origin import SERVICE
from meshproxy.launch import Sidecar, SidecarError, start_sidecar

__all__ = [
    "ADMIN_PORT",
    "OUTBOUND_PORT",
    "Sidecar",
    "SidecarError",
    "demo_bootstrap",
    "port_or_any",
    "start_sidecar",
]

ADMIN_PORT = 15000
OUTBOUND_PORT = 15001


def port_or_any(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it can be bound right now, else 0 (the OS picks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, preferred))
        except OSError:
            return 0
    return preferred


def demo_bootstrap(
    v1_port: int, v2_port: int, outbound_port: int, admin_port: int
) -> dict[str, Any]:
    """One outbound listener; ``ratings`` has a v1 and a v2 endpoint and a
    route that sends 90% of requests to v1 and 10% to v2."""
    config: dict[str, Any] = {
        "node": {"id": "demo-1", "service": "demo-client"},
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "listeners": [
            {
                "name": "outbound",
                "direction": "outbound",
                "address": "127.0.0.1",
                "port": outbound_port,
            },
        ],
        "snapshot": {
            "services": {
                SERVICE: {
                    "endpoints": [
                        {"address": "127.0.0.1", "port": v1_port, "labels": {"version": "v1"}},
                        {"address": "127.0.0.1", "port": v2_port, "labels": {"version": "v2"}},
                    ]
                }
            },
            "routes": [
                {
                    "service": SERVICE,
                    "rules": [
                        {
                            "match": [{"path": {"prefix": "/"}}],
                            "backends": [
                                {"subset": "v1", "weight": 90},
                                {"subset": "v2", "weight": 10},
                            ],
                        }
                    ],
                }
            ],
            "policies": [
                {
                    "service": SERVICE,
                    "subsets": {
                        "v1": {"labels": {"version": "v1"}},
                        "v2": {"labels": {"version": "v2"}},
                    },
                }
            ],
        },
    }
    parse_bootstrap(yaml.safe_dump(config), "demo config")
    return config
