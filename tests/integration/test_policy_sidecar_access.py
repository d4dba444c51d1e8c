"""Access policies and JWT authentication through a running sidecar."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.integration.client import Conn, Response
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import inbound_config
from tests.unit.policy.jwt_keys import ISSUER, SigningKey, claims, jwks

pytestmark = pytest.mark.integration


async def ask(port: int, requests: list[bytes]) -> list[Response]:
    async with asyncio.timeout(10):
        answers = []
        for raw in requests:
            conn = await Conn.open(port)
            answers.append(await conn.request(raw))
            await conn.close()
        return answers


def request(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: ratings\r\n{extra}\r\n".encode()


async def test_access_policies_allow_and_deny_as_configured(
    origin: Origin, proxies: StartProxy
) -> None:
    access = [
        {
            "service": "ratings",
            "action": "allow",
            "principal_header": "x-caller",
            "rules": [{"from": {"services": ["reviews"]}, "to": {"methods": ["GET"]}}],
        },
        {"service": "ratings", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]},
    ]
    proxy = await proxies(inbound_config(origin.port, access=access))
    answers = await ask(
        proxy.ports["inbound"],
        [
            request("GET", "/ratings/1", "X-Caller: reviews\r\n"),
            request("POST", "/ratings/1", "X-Caller: reviews\r\n"),
            request("GET", "/ratings/1", "X-Caller: productpage\r\n"),
            request("GET", "/admin/users", "X-Caller: reviews\r\n"),
            request("GET", "/x/../admin/users", "X-Caller: reviews\r\n"),
        ],
    )
    assert [a.status for a in answers] == [200, 403, 403, 403, 403]
    assert answers[1].body == b"access denied: no allow policy matched\n"
    assert answers[3].body == b"access denied: deny policy\n"
    assert [r.path for r in origin.requests] == ["/ratings/1"]


async def test_jwt_valid_passes_expired_or_wrongly_signed_get_401(
    origin: Origin, proxies: StartProxy, tmp_path: Path
) -> None:
    key = SigningKey("k1", "EC")
    (tmp_path / "jwks.json").write_text(jwks(key))
    jwt_filter = {
        "name": "jwt",
        "config": {
            "issuer": ISSUER,
            "audiences": ["ratings"],
            "jwks_file": str(tmp_path / "jwks.json"),
        },
    }
    access = [
        {
            "service": "ratings",
            "action": "allow",
            "rules": [{"when": [{"claim": "role", "values": ["reader"]}]}],
        }
    ]
    proxy = await proxies(inbound_config(origin.port, filters=[jwt_filter], access=access))
    now = time.time()
    impostor = SigningKey("k1", "EC")

    def bearer(token: str) -> bytes:
        return request("GET", "/", f"Authorization: Bearer {token}\r\n")

    answers = await ask(
        proxy.ports["inbound"],
        [
            bearer(key.token(claims(now, role="reader"))),
            bearer(key.token(claims(now, role="reader", exp=now - 3600))),
            bearer(impostor.token(claims(now, role="reader"))),
            request("GET", "/"),
            bearer(key.token(claims(now, role="writer"))),
        ],
    )
    assert [a.status for a in answers] == [200, 401, 401, 401, 403]
    assert answers[1].body == b"token expired\n"
    assert answers[2].body == b"invalid signature\n"
    assert answers[1].header("www-authenticate") == 'Bearer error="invalid_token"'
    assert len(origin.requests) == 1
