"""Bearer tokens with two scopes: ``read`` and ``write`` (write implies read).

No or unknown token: 401 (who are you?).  A read token on a write: 403 (you
may not).  Every configured token is compared on every request, each in
constant time, so timing tells neither which token nor how much of it matched.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

Scope = Literal["read", "write", "none"]


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class AuthError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class Tokens:
    def __init__(self, admin: str, read: str | None) -> None:
        self._tokens: list[tuple[bytes, Principal]] = [
            (admin.encode(), Principal("admin", frozenset({"read", "write"})))
        ]
        if read:
            self._tokens.append((read.encode(), Principal("reader", frozenset({"read"}))))

    def identify(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token:
            return None
        given = token.strip().encode()
        found = None
        for secret, principal in self._tokens:
            if hmac.compare_digest(given, secret) and found is None:
                found = principal
        return found

    def authorize(self, authorization: str | None, scope: Scope) -> Principal:
        if scope == "none":
            return Principal("anonymous", frozenset())
        principal = self.identify(authorization)
        if principal is None:
            raise AuthError(401, "a valid bearer token is required")
        if scope not in principal.scopes:
            raise AuthError(403, f"this token lacks the {scope!r} scope")
        return principal
