"""The security settings in the bootstrap and the per-service TLS mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meshproxy.config.bootstrap import Bootstrap
from meshproxy.config.policy import Policy


def test_tls_is_off_by_default_and_a_service_inherits_the_mesh_mode() -> None:
    boot = Bootstrap.model_validate({"node": {"id": "r-1", "service": "reviews"}})
    assert boot.security.mode == "disable"
    assert boot.security.renew_fraction == pytest.approx(2 / 3)
    assert Policy(service="ratings").tls.mode is None
    strict = Policy.model_validate({"service": "ratings", "tls": {"mode": "strict"}})
    assert strict.tls.mode == "strict"


@pytest.mark.parametrize(
    ("security", "field"),
    [
        ({"mode": "on"}, "mode"),
        ({"trust_domain": "Bad Domain"}, "trust_domain"),
        ({"cert_file": "c.pem"}, "go together"),
        ({"bootstrap_token": "a", "bootstrap_token_file": "t"}, "not both"),
        ({"renew_fraction": 1.0}, "renew_fraction"),
    ],
)
def test_bad_security_settings_are_refused_naming_the_problem(
    security: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        Bootstrap.model_validate({"node": {"id": "r-1", "service": "r"}, "security": security})


def test_the_bootstrap_token_is_a_secret() -> None:
    boot = Bootstrap.model_validate(
        {"node": {"id": "r-1", "service": "r"}, "security": {"bootstrap_token": "s3cret"}}
    )
    assert "s3cret" not in repr(boot.security)
