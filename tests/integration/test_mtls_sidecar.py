"""mTLS through real sidecars (``python -m meshproxy run``) whose certificates
come from a real ``meshcontrol``: client -> sidecar A outbound -> mTLS ->
sidecar B inbound -> the local app.  Strangers and plaintext are refused on a
STRICT port, a server with the wrong SPIFFE ID is refused by the caller,
PERMISSIVE takes both, a root rotation with short-lived certificates under
steady load loses no request, and access policies see the peer's principal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import ProxyProcess
from tests.unit.security.pki import PKI

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
ADMIN = "mtls-admin-token"
TOKENS = {
    "tok-reviews": "default/reviews",
    "tok-ratings": "default/ratings",
    "tok-any": "default/*",
}
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
ControlFactory = Callable[..., str]


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlFactory]:
    """Start ``meshcontrol run`` (at most one per test) with extra CA settings."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**ca: str) -> str:
        log = tmp_path / "meshcontrol.log"
        env = {
            **os.environ,
            "MESHCONTROL_DATA_DIR": str(tmp_path / "control"),
            "MESHCONTROL_ADMIN_TOKEN": ADMIN,
            "MESHCONTROL_CA_BOOTSTRAP_TOKENS": json.dumps(TOKENS),
            **{f"MESHCONTROL_CA_{k.upper()}": v for k, v in ca.items()},
        }
        with log.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "control", "run", "--port", "0"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"listening address=\S+ port=(\d+)", log.read_text())
            if found:
                return f"http://127.0.0.1:{found.group(1)}"
            time.sleep(0.05)
        raise AssertionError(log.read_text())

    try:
        yield start
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sidecar(
    service: str,
    token: str,
    control_url: str,
    *,
    mode: str = "strict",
    local_app: int | None = None,
    services: dict[str, int] | None = None,
    access: list[dict[str, Any]] | None = None,
    bundle_refresh: str = "60s",
) -> dict[str, Any]:
    """A bootstrap: an outbound listener, an inbound one when ``local_app`` is
    given, and ``services`` whose one endpoint each is a peer's inbound port."""
    listeners: list[dict[str, Any]] = [
        {"name": "outbound", "direction": "outbound", "address": "127.0.0.1", "port": 0}
    ]
    if local_app is not None:
        listeners.append(
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "local_app": f"127.0.0.1:{local_app}",
            }
        )
    return {
        "node": {"id": f"{service}-1", "service": service},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": listeners,
        "security": {
            "mode": mode,
            "ca_url": control_url,
            "bootstrap_token": token,
            "bundle_refresh": bundle_refresh,
        },
        "snapshot": {
            "services": {
                name: {"endpoints": [{"address": "127.0.0.1", "port": port}]}
                for name, port in (services or {}).items()
            },
            "access": access or [],
        },
    }


async def admin_json(proxy: ProxyProcess, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.admin_port}{path}") as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def refusals(proxy: ProxyProcess) -> dict[tuple[str, str], float]:
    stats = await admin_json(proxy, "/stats")
    return {
        (s["labels"]["direction"], s["labels"]["reason"]): s["value"]
        for s in stats.get("meshproxy_tls_refusals_total", [])
    }


async def call(port: int, path: str, host: str) -> tuple[int, bytes]:
    conn = await Conn.open(port)
    try:
        resp = await conn.request(get(path, host=host, extra="Connection: close\r\n"))
    finally:
        await conn.close()
    return resp.status, resp.body


async def pair(
    control_url: str, origin: Origin, proxies: StartProxy, mode: str = "strict"
) -> tuple[ProxyProcess, ProxyProcess]:
    """B (ratings, in front of ``origin``) and A (reviews, calling ratings at B)."""
    b = await proxies(
        sidecar("ratings", "tok-ratings", control_url, mode=mode, local_app=origin.port)
    )
    a = await proxies(
        sidecar("reviews", "tok-reviews", control_url, services={"ratings": b.ports["inbound"]})
    )
    return a, b


async def test_two_sidecars_talk_over_mtls_and_show_their_certificates(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    a, b = await pair(control(), origin, proxies)
    async with asyncio.timeout(20):
        assert await call(a.ports["outbound"], "/", "ratings") == (200, b"hello world\n")
        conn = await Conn.open(a.ports["outbound"])
        for _ in range(3):  # keep-alive both hops: the pooled mTLS connection is reused
            assert (await conn.request(get("/", host="ratings"))).status == 200
        await conn.close()
        b_certs = await admin_json(b, "/certs")
        a_certs = await admin_json(a, "/certs")
    assert b_certs["identity"] == RATINGS and a_certs["identity"] == REVIEWS
    assert b_certs["inbound_mode"] == "strict" and a_certs["mtls_services"] == ["ratings"]
    assert 0 < b_certs["expires_in"] <= 86400
    assert re.fullmatch(r"[0-9a-f]+", b_certs["serial"])
    assert len(b_certs["trust_bundle"]) == 1
    # One connection from A's pool for the four requests after the first.
    assert origin.connections <= 2


async def test_strict_inbound_refuses_plaintext_no_certificate_and_another_ca(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    _a, b = await pair(control(), origin, proxies)
    port = b.ports["inbound"]
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
    stranger = PKI().contexts("reviews").client  # a valid-looking SVID from another CA
    stranger.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(20):
        for ctx in (None, bare, stranger):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            try:
                writer.write(get("/", host="ratings"))
                assert await reader.read() == b""
            except (ssl.SSLError, ConnectionResetError):
                pass  # TLS 1.3: the refusal comes as an alert on the first read
            finally:
                writer.close()
        expected = {
            ("inbound", "plaintext_on_strict"): 1.0,
            ("inbound", "no_client_certificate"): 1.0,
            ("inbound", "unknown_ca"): 1.0,
        }
        for _ in range(100):  # the listener counts each refusal as its handshake ends
            seen = await refusals(b)
            if seen == expected:
                break
            await asyncio.sleep(0.1)
    assert seen == expected
    assert origin.connections == 0


async def test_a_server_with_another_spiffe_id_is_refused_by_the_caller(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    url = control()
    b = await proxies(sidecar("ratings", "tok-ratings", url, local_app=origin.port))
    # A means to reach "details", but the endpoint it was given is ratings' sidecar.
    a = await proxies(
        sidecar(
            "reviews",
            "tok-reviews",
            url,
            services={"details": b.ports["inbound"], "ratings": b.ports["inbound"]},
        )
    )
    async with asyncio.timeout(20):
        status, body = await call(a.ports["outbound"], "/", "details")
        assert (await call(a.ports["outbound"], "/", "ratings"))[0] == 200
        seen = await refusals(a)
    assert status == 503
    assert b"wrong_spiffe_id" in body
    assert seen == {("outbound", "wrong_spiffe_id"): 1.0}
    assert origin.connections == 1  # only the request to ratings got through


async def test_permissive_accepts_plaintext_and_mtls(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    a, b = await pair(control(), origin, proxies, mode="permissive")
    async with asyncio.timeout(20):
        plain = await call(b.ports["inbound"], "/", "ratings")
        mtls = await call(a.ports["outbound"], "/", "ratings")
        certs = await admin_json(b, "/certs")
        seen = await refusals(b)
    assert plain == mtls == (200, b"hello world\n")
    assert certs["inbound_mode"] == "permissive"
    assert seen == {}


async def test_a_root_rotation_with_short_lived_certificates_under_load_loses_no_request(
    control: ControlFactory, origin: Origin, proxies: StartProxy, http: aiohttp.ClientSession
) -> None:
    url = control(cert_ttl="6s", publish_delay="1s")
    b = await proxies(
        sidecar("ratings", "tok-ratings", url, local_app=origin.port, bundle_refresh="200ms")
    )
    a = await proxies(
        sidecar(
            "reviews",
            "tok-reviews",
            url,
            services={"ratings": b.ports["inbound"]},
            bundle_refresh="200ms",
        )
    )
    first = await admin_json(b, "/certs")
    outcomes: list[int | str] = []
    stopping = asyncio.Event()

    async def keep_calling(fresh: bool) -> None:
        # New client connections (so A opens new mTLS connections as its pooled
        # ones close) and one long keep-alive connection.
        conn: Conn | None = None
        while not stopping.is_set():
            try:
                if fresh:
                    outcomes.append((await call(a.ports["outbound"], "/", "ratings"))[0])
                else:
                    if conn is None:
                        conn = await Conn.open(a.ports["outbound"])
                    outcomes.append((await conn.request(get("/", host="ratings"))).status)
            except (OSError, ValueError) as exc:
                outcomes.append(repr(exc))
            await asyncio.sleep(0.01)
        if conn is not None:
            await conn.close()

    async with asyncio.timeout(40):
        load = [asyncio.create_task(keep_calling(fresh)) for fresh in (True, False)]
        await asyncio.sleep(1.0)
        rotate = await http.post(
            f"{url}/v1/ca/rotate", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert rotate.status == 200
        await asyncio.sleep(1.0)
        # The new root is trusted at once, the old one until its last leaf expires.
        overlap = await admin_json(b, "/certs")
        # Two leaf lifetimes: both sidecars renew under the new root, twice.
        await asyncio.sleep(11.0)
        stopping.set()
        await asyncio.gather(*load)
        last = await admin_json(b, "/certs")
        caller = await admin_json(a, "/certs")
        seen = await refusals(b) | await refusals(a)
    assert [o for o in outcomes if o != 200] == []
    assert len(outcomes) > 100
    assert last["serial"] != first["serial"] and last["generation"] >= 3
    assert caller["generation"] >= 3
    roots = [[root["serial"] for root in view["trust_bundle"]] for view in (first, overlap, last)]
    assert len(roots[0]) == 1 and len(roots[2]) == 1 and roots[0] != roots[2]
    assert sorted(roots[1]) == sorted(roots[0] + roots[2])
    assert seen == {}


async def test_an_mtls_inbound_port_is_shared_by_several_workers(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    url = control()
    b = await proxies(
        sidecar("ratings", "tok-ratings", url, local_app=origin.port), "--workers", "2"
    )
    a = await proxies(
        sidecar("reviews", "tok-reviews", url, services={"ratings": b.ports["inbound"]})
    )
    async with asyncio.timeout(30):
        statuses = [(await call(a.ports["outbound"], "/", "ratings"))[0] for _ in range(20)]
    # Without SO_REUSEPORT on the mTLS listener the second worker cannot bind
    # and the supervisor never gets ready.
    assert statuses == [200] * 20


async def test_access_policies_allow_and_deny_by_the_mtls_principal(
    control: ControlFactory, origin: Origin, proxies: StartProxy
) -> None:
    url = control()
    access = [
        {
            "service": "ratings",
            "action": "allow",
            "rules": [
                {
                    "from": {"principals": [REVIEWS]},
                    "to": {"methods": ["GET"], "paths": ["/ratings/*"]},
                }
            ],
        }
    ]
    b = await proxies(sidecar("ratings", "tok-ratings", url, local_app=origin.port, access=access))
    inbound = {"ratings": b.ports["inbound"]}
    reviews = await proxies(sidecar("reviews", "tok-reviews", url, services=inbound))
    other = await proxies(sidecar("productpage", "tok-any", url, services=inbound))
    async with asyncio.timeout(20):
        allowed = await call(reviews.ports["outbound"], "/ratings/7", "ratings")
        conn = await Conn.open(reviews.ports["outbound"])
        try:
            wrong_method = await conn.request(
                b"DELETE /ratings/7 HTTP/1.1\r\nHost: ratings\r\nConnection: close\r\n\r\n",
                "DELETE",
            )
        finally:
            await conn.close()
        stranger = await call(other.ports["outbound"], "/ratings/7", "ratings")
    assert allowed == (200, b"hello world\n")
    assert wrong_method.status == 403
    assert stranger[0] == 403
    assert [seen.path for seen in origin.requests] == ["/ratings/7"]
