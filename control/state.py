"""The desired mesh state (route tables, service policies, access policies) and
the check of a whole state before it is committed.

Plain data and pure functions: no store, no clock, no sockets.  The models and
the cross-resource check are the sidecar's own (``meshproxy.config`` and the
routing room's compile), so what the API accepts is what a sidecar accepts;
no rule of the mesh is written a second time here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from meshproxy.config.access import Access
from meshproxy.config.load import ConfigError
from meshproxy.config.policy import Endpoint, Policy, Service
from meshproxy.config.routes import RouteTable
from meshproxy.config.snapshot import Snapshot
from meshproxy.routing import CompiledRoutes

Kind = Literal["routes", "policies", "access"]
KINDS: tuple[Kind, ...] = ("routes", "policies", "access")
Resource = RouteTable | Policy | Access
MODELS: dict[Kind, type[RouteTable] | type[Policy] | type[Access]] = {
    "routes": RouteTable,
    "policies": Policy,
    "access": Access,
}


class StateError(Exception):
    """A desired state refused.  ``problems`` lists ``(field path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in problems))


def dump(model: Resource | Endpoint) -> dict[str, Any]:
    """The JSON form used on the wire and in the store (aliases, durations as text)."""
    return model.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class DesiredState:
    """Every resource by kind, then by service name.  Replaced, never mutated."""

    routes: dict[str, RouteTable] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    access: dict[str, Access] = field(default_factory=dict)

    def of(self, kind: Kind) -> dict[str, Any]:
        table: dict[str, Any] = getattr(self, kind)
        return table

    def with_resource(self, kind: Kind, name: str, resource: Resource | None) -> DesiredState:
        """A copy with ``kind/name`` replaced (or removed when ``resource`` is None)."""
        tables: dict[str, dict[str, Any]] = {k: dict(self.of(k)) for k in KINDS}
        if resource is None:
            tables[kind].pop(name, None)
        else:
            tables[kind][name] = resource
        return DesiredState(**tables)

    def services(self) -> set[str]:
        return set(self.routes) | set(self.policies) | set(self.access)

    def to_json(self) -> str:
        return json.dumps(
            {k: {n: dump(r) for n, r in sorted(self.of(k).items())} for k in KINDS},
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> DesiredState:
        data = json.loads(text)
        return cls(
            routes={n: RouteTable.model_validate(b) for n, b in data["routes"].items()},
            policies={n: Policy.model_validate(b) for n, b in data["policies"].items()},
            access={n: Access.model_validate(b) for n, b in data["access"].items()},
        )


def parse_resource(kind: Kind, name: str, body: object) -> Resource:
    """Validate an API body for ``kind/name``.  The body may omit ``service``
    (the path names it); if it gives one, it must agree with the path."""
    if not isinstance(body, dict):
        raise StateError([("(body)", "expected a JSON object")])
    data = dict(body)
    given = data.setdefault("service", name)
    if given != name:
        raise StateError([("service", f"the body names {given!r} but the path names {name!r}")])
    try:
        return MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise StateError(pydantic_problems(exc)) from None


def pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"]) or "(body)"
        problems.append((prefix + path, err["msg"]))
    return problems


def candidate_snapshot(state: DesiredState, known_services: set[str]) -> Snapshot:
    """Every resource of ``state`` as one snapshot, routes and policies in the
    order of their service names, with each service named by the state or the
    registry (no endpoints: what is checked does not depend on them)."""
    names = sorted(state.services() | known_services)
    return Snapshot(
        services={n: Service() for n in names},
        routes=[state.routes[n] for n in sorted(state.routes)],
        policies=[state.policies[n] for n in sorted(state.policies)],
        access=[state.access[n] for n in sorted(state.access)],
    )


def check_state(state: DesiredState, known_services: set[str]) -> None:
    """Refuse a state whose resources do not fit together, naming the field.

    The sidecar's own route compiler decides (every backend and mirror names a
    known service and subset, no host routed twice), so the API refuses exactly
    what a sidecar holding the whole mesh would.  ``known_services`` are the
    services that exist outside the desired state (the registry).
    """
    try:
        CompiledRoutes.from_snapshot(candidate_snapshot(state, known_services), where=_WHERE)
    except ConfigError as exc:
        names = sorted(state.routes)
        raise StateError([_api_problem(w, m, names) for w, m in exc.problems]) from None


_WHERE = "snapshot"
_ROUTES_AT = re.compile(r"\broutes\.(\d+)")


def _api_problem(where: str, message: str, names: list[str]) -> tuple[str, str]:
    """``snapshot.routes.N.x`` -> ``routes.<service>.x``, in the message too."""

    def by_name(found: re.Match[str]) -> str:
        index = int(found.group(1))
        return f"routes.{names[index]}" if index < len(names) else found.group(0)

    where = where.removeprefix(f"{_WHERE}.")
    return _ROUTES_AT.sub(by_name, where), _ROUTES_AT.sub(by_name, message)
