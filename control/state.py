"""The desired mesh state (route tables, service policies, access policies) and
the check of a whole state before it is committed.

Plain data and pure functions: no store, no clock, no sockets.  The models are
the sidecar's own (``meshproxy.config``), so what the API accepts is exactly
what a sidecar will accept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from meshproxy.config.access import Access
from meshproxy.config.policy import Endpoint, Policy
from meshproxy.config.routes import RouteTable

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


def check_state(state: DesiredState, known_services: set[str]) -> None:
    """Refuse a state whose resources do not fit together, naming the field.

    Cross-resource rules only; each resource was validated on its own already.
    ``known_services`` are services that exist outside the desired state (the
    registry), so a backend may name them.
    """
    problems: list[tuple[str, str]] = []
    services = state.services() | known_services
    for name, table in sorted(state.routes.items()):
        for r, rule in enumerate(table.rules):
            for b, backend in enumerate(rule.backends):
                where = f"routes.{name}.rules.{r}.backends.{b}"
                target = backend.service or table.service
                if backend.service is not None and backend.service not in services:
                    problems.append((f"{where}.service", f"unknown service {target!r}"))
                    continue
                if backend.subset is None:
                    continue
                policy = state.policies.get(target)
                if policy is None or backend.subset not in policy.subsets:
                    problems.append(
                        (
                            f"{where}.subset",
                            f"unknown subset {backend.subset!r}: the policy of service "
                            f"{target!r} does not define it",
                        )
                    )
    if problems:
        raise StateError(problems)
