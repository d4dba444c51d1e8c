"""Snapshot builders shared by the routing tests."""

from __future__ import annotations

from typing import Any

from meshproxy.config.snapshot import Snapshot


def snapshot(routes: list[dict[str, Any]], **extra: Any) -> Snapshot:
    """A snapshot with service ``ratings`` (v1 on 9001, v2 on 9002, v3 labels
    on 9003) and ``reviews`` (one endpoint), and the given route tables."""
    data: dict[str, Any] = {
        "services": {
            "ratings": {
                "endpoints": [
                    {"address": "127.0.0.1", "port": 9001, "labels": {"version": "v1"}},
                    {"address": "127.0.0.1", "port": 9002, "labels": {"version": "v2"}},
                    {"address": "127.0.0.1", "port": 9003, "labels": {"version": "v3"}},
                ]
            },
            "reviews": {"endpoints": [{"address": "127.0.0.1", "port": 9100}]},
        },
        "policies": [
            {
                "service": "ratings",
                "subsets": {
                    "v1": {"labels": {"version": "v1"}},
                    "v2": {"labels": {"version": "v2"}},
                    "v3": {"labels": {"version": "v3"}},
                },
            }
        ],
        "routes": routes,
    }
    data.update(extra)
    return Snapshot.model_validate(data)
