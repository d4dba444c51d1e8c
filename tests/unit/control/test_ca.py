"""The mesh CA: SVIDs it signs, files it keeps, and root rotation with overlap."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from control.api.certs import install_ca
from control.app import build_app
from control.ca import CADirectory, CAError, CASettings, CertificateAuthority, new_signer
from control.settings import ControlSettings
from control.store.sqlite import SQLiteStore
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import CertInfo, build_csr, generate_key, load_certificates

NOW = 1_800_000_000.0
DAY = 86400.0
ME = SpiffeId.of("cluster.local", "shop", "reviews")


def _ca(intermediate: bool = False, **settings: object) -> CertificateAuthority:
    s = CASettings(intermediate=intermediate, **settings)
    return CertificateAuthority("cluster.local", new_signer("cluster.local", NOW, s), s.cert_ttl)


def _csr(identity: SpiffeId = ME) -> bytes:
    return build_csr(generate_key(), identity)


def test_an_svid_names_the_identity_lives_24h_and_is_a_tls_leaf() -> None:
    issued = _ca().sign(_csr(), ME, NOW)
    leaf = load_certificates(issued.chain)[0]
    assert issued.info.identity == ME
    assert issued.info.not_after == NOW + DAY
    assert issued.info.not_before <= NOW
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert format(leaf.serial_number, "x") == issued.info.serial


def test_with_an_intermediate_the_chain_carries_it_and_the_bundle_only_the_root() -> None:
    ca = _ca(intermediate=True)
    chain = load_certificates(ca.sign(_csr(), ME, NOW).chain)
    roots = load_certificates(ca.trust_bundle(NOW))
    assert len(chain) == 2 and len(roots) == 1
    assert chain[0].issuer == chain[1].subject
    assert chain[1].issuer == roots[0].subject


def test_a_csr_asking_for_another_identity_is_refused() -> None:
    other = SpiffeId.of("cluster.local", "shop", "payments")
    with pytest.raises(CAError, match="payments"):
        _ca().sign(_csr(other), ME, NOW)


def test_an_identity_of_another_trust_domain_or_a_garbled_csr_is_refused() -> None:
    ca = _ca()
    with pytest.raises(CAError, match="trust domain"):
        ca.sign(_csr(), SpiffeId.of("evil.example", "shop", "reviews"), NOW)
    with pytest.raises(CAError, match="CSR"):
        ca.sign(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ME,
            NOW,
        )


def test_an_svid_never_outlives_its_issuer() -> None:
    ca = _ca(intermediate=True, intermediate_ttl="2h")
    issued = ca.sign(_csr(), ME, NOW)
    assert issued.info.not_after == pytest.approx(NOW + 7200.0)


def test_root_rotation_trusts_both_roots_during_the_overlap_then_only_the_new() -> None:
    settings = CASettings()
    ca = _ca()
    old_root = ca.signer.root_cert
    ca.begin_rotation(NOW, publish_delay=3600.0, settings=settings)
    assert ca.trusted_roots(NOW) == [old_root, ca.pending.signer.root_cert]  # type: ignore[union-attr]
    # Before activation the old root still signs: peers may not know the new one yet.
    assert ca.sign(_csr(), ME, NOW + 10).chain
    assert ca.signer.root_cert == old_root
    assert ca.advance(NOW + 3600.0)
    new_root = ca.signer.root_cert
    assert new_root != old_root
    assert ca.trusted_roots(NOW + 3601) == [new_root, old_root]
    leaf = load_certificates(ca.sign(_csr(), ME, NOW + 3601).chain)[0]
    assert leaf.issuer == new_root.subject
    # The old root leaves once every certificate it signed has expired.
    assert not ca.advance(NOW + 3600.0 + DAY - 1)
    assert ca.advance(NOW + 3600.0 + DAY)
    assert ca.trusted_roots(NOW + 3600.0 + DAY) == [new_root]


def test_a_second_rotation_waits_for_the_first() -> None:
    ca = _ca()
    ca.begin_rotation(NOW, 60.0, CASettings())
    with pytest.raises(CAError, match="in progress"):
        ca.begin_rotation(NOW, 60.0, CASettings())


def _modes(path: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}


def test_a_generated_ca_is_kept_0600_and_reloaded_the_same(tmp_path: Path) -> None:
    settings = CASettings(intermediate=True)
    directory = CADirectory(tmp_path / "ca", settings)
    first = directory.load_or_create(NOW)
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    modes = _modes(tmp_path / "ca")
    assert {"root.pem", "root.key", "intermediate.pem", "intermediate.key"} <= set(modes)
    assert set(modes.values()) == {0o600}
    again = CADirectory(tmp_path / "ca", settings).load_or_create(NOW + 5)
    assert again.trust_bundle(NOW) == first.trust_bundle(NOW)
    assert again.signer.issuer.cert == first.signer.issuer.cert


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    CADirectory(tmp_path, CASettings()).load_or_create(NOW)
    (tmp_path / "root.key").chmod(0o644)
    with pytest.raises(CAError, match="chmod 600"):
        CADirectory(tmp_path, CASettings()).load_or_create(NOW)


def test_a_rotation_in_progress_survives_a_restart(tmp_path: Path) -> None:
    settings = CASettings()
    directory = CADirectory(tmp_path, settings)
    ca = directory.load_or_create(NOW)
    ca.begin_rotation(NOW, 3600.0, settings)
    directory.save(ca)
    restarted = CADirectory(tmp_path, settings).load_or_create(NOW + 1)
    assert restarted.trust_bundle(NOW + 1) == ca.trust_bundle(NOW + 1)
    assert restarted.advance(NOW + 3600.0)
    CADirectory(tmp_path, settings).save(restarted)
    after = CADirectory(tmp_path, settings).load_or_create(NOW + 3601)
    assert after.signer.root_cert == restarted.signer.root_cert
    assert len(after.trusted_roots(NOW + 3601)) == 2
    assert not (tmp_path / "next-root.pem").exists()


def test_operator_given_root_files_sign_and_are_never_rewritten(tmp_path: Path) -> None:
    made = CADirectory(tmp_path / "made", CASettings(intermediate=True)).load_or_create(NOW)
    given = CASettings(
        root_cert_file=tmp_path / "made" / "root.pem",
        intermediate_cert_file=tmp_path / "made" / "intermediate.pem",
        intermediate_key_file=tmp_path / "made" / "intermediate.key",
    )
    ca = CADirectory(tmp_path / "ca", given).load_or_create(NOW)
    assert not (tmp_path / "ca" / "root.key").exists()
    chain = ca.sign(_csr(), ME, NOW).chain
    assert CertInfo.of_chain(chain).identity == ME
    assert ca.trust_bundle(NOW) == made.trust_bundle(NOW)
    with pytest.raises(CAError, match="operator"):
        ca.begin_rotation(NOW, 0.0, given)


def test_durations_in_settings_read_as_text() -> None:
    assert CASettings(cert_ttl="1h").cert_ttl == 3600.0
    assert CASettings().cert_ttl == DAY


# -- the CSR endpoint ------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = ControlSettings(admin_token="admin-secret", data_dir=tmp_path, tick=0.05)
    app = build_app(settings, SQLiteStore(tmp_path / "m.db"))
    ca_settings = CASettings(
        bootstrap_tokens={"tok-reviews": "shop/reviews", "tok-shop": "shop/*"},
        publish_delay="0s",
    )
    install_ca(app, tmp_path, ca_settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _ask(
    api: TestClient[Any, Any], token: str, service: str = "reviews", csr: bytes | None = None
) -> Any:
    body = {"csr": (csr or _csr(SpiffeId.of("cluster.local", "shop", service))).decode()}
    body |= {"namespace": "shop", "service": service}
    return await api.post("/v1/certificates", json=body, headers=_bearer(token))


async def test_a_bootstrap_token_gets_its_identity_signed(api: TestClient[Any, Any]) -> None:
    response = await _ask(api, "tok-reviews")
    assert response.status == 200
    body = await response.json()
    assert body["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/reviews"
    info = CertInfo.of_chain(body["certificate_chain"].encode())
    assert info.identity == ME and info.serial == body["serial"]
    assert body["not_after"] - body["not_before"] == pytest.approx(DAY + 60.0)
    assert len(load_certificates(body["trust_bundle"].encode())) == 1


async def test_no_or_unknown_bootstrap_token_is_401_and_another_identity_403(
    api: TestClient[Any, Any],
) -> None:
    assert (await api.post("/v1/certificates", json={})).status == 401
    assert (await _ask(api, "admin-secret")).status == 401
    refused = await _ask(api, "tok-reviews", service="payments")
    assert refused.status == 403
    assert "payments" in (await refused.json())["error"]
    assert (await _ask(api, "tok-shop", service="payments")).status == 200


async def test_a_bad_csr_is_422_naming_the_field_and_a_non_json_body_400(
    api: TestClient[Any, Any],
) -> None:
    wrong = await _ask(
        api, "tok-shop", service="reviews", csr=_csr(SpiffeId.of("cluster.local", "shop", "x"))
    )
    assert wrong.status == 422
    assert (await wrong.json())["problems"][0]["field"] == "csr"
    garbled = await _ask(api, "tok-shop", csr=b"not a csr")
    assert garbled.status == 422
    text = await api.post("/v1/certificates", data=b"{", headers=_bearer("tok-shop"))
    assert text.status == 400


async def test_a_root_rotation_shows_in_the_trust_bundle_and_needs_the_write_token(
    api: TestClient[Any, Any],
) -> None:
    before = await (await api.get("/v1/trust-bundle")).json()
    assert before["roots"] == 1
    assert (await api.post("/v1/ca/rotate")).status == 401
    started = await api.post("/v1/ca/rotate", headers=_bearer("admin-secret"))
    assert started.status == 200
    after = await (await api.get("/v1/trust-bundle")).json()
    assert after["roots"] == 2  # the new root signs now (no publish delay), the old overlaps
    issued = await (await _ask(api, "tok-reviews")).json()
    leaf = load_certificates(issued["certificate_chain"].encode())[0]
    roots = load_certificates(after["trust_bundle"].encode())
    assert leaf.issuer == roots[0].subject != roots[1].subject


async def test_the_ca_endpoints_are_in_the_openapi_document(api: TestClient[Any, Any]) -> None:
    doc = await (await api.get("/openapi.json")).json()
    post = doc["paths"]["/v1/certificates"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "CertificateRequest"
    )
    assert {"401", "403", "422"} <= set(post["responses"])
    assert "/v1/trust-bundle" in doc["paths"] and "/v1/ca/rotate" in doc["paths"]
