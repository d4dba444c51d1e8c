"""The snapshot: everything a sidecar runs with (DESIGN section 3).

One definition, two sources: a YAML file (static mode) or the control plane
(dynamic mode).  Models only validate and describe; compiling them into fast
structures is the job of ``routing`` and ``upstream``.  The parts live in
``routes``, ``policy`` and ``access``; this module assembles them.
"""

from __future__ import annotations

from meshproxy.config.access import Access
from meshproxy.config.base import Model
from meshproxy.config.filters import FilterRef
from meshproxy.config.policy import Policy, Service
from meshproxy.config.routes import RouteTable


class Snapshot(Model):
    version: str | None = None
    services: dict[str, Service] = {}
    routes: list[RouteTable] = []
    policies: list[Policy] = []
    access: list[Access] = []
    filters: list[FilterRef] = []  # user filters, in chain order (meshproxy.policy)
