"""Filters named in a snapshot: loading, config validation at load, the chain's order."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from meshproxy.config import ConfigError, Snapshot, parse_bootstrap
from meshproxy.policy import ChainEntry, LocalReply, RequestContext, compile_chain
from meshproxy.policy.plugins import PluginError, load_filter_class
from tests.unit.policy.jwt_keys import ISSUER, SigningKey, jwks

EXAMPLE_SRC = Path(__file__).resolve().parents[3] / "examples" / "ab_tagger" / "src"


class NoConfig:
    """Used by dotted path from the tests below."""

    def on_request(self, ctx: RequestContext) -> None:
        ctx.scratch.setdefault("order", []).append("noconfig")


class Shouter:
    class Config(BaseModel):
        word: str

    def __init__(self, config: Config) -> None:
        self.word = config.word.encode()

    def on_request(self, ctx: RequestContext) -> None:
        ctx.scratch.setdefault("order", []).append("shouter")

    def on_response(self, ctx: RequestContext) -> None:
        ctx.add_response_header(b"X-Shout", self.word)


class Identity:
    stage = "authn"

    def on_request(self, ctx: RequestContext) -> None:
        ctx.scratch.setdefault("order", []).append("identity")
        ctx.peer = "reviews"


class NotAFilter:
    pass


HERE = __name__


@pytest.fixture
def ab_tagger_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the example plugin importable and visible as an entry point, as
    ``pip install`` would: its source on sys.path plus a dist-info directory."""
    dist = tmp_path / "meshproxy_ab_tagger-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: meshproxy-ab-tagger\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text("[meshproxy.filters]\nab_tagger = ab_tagger:AbTagger\n")
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))


def snapshot(**kw: Any) -> Snapshot:
    return Snapshot.model_validate(kw)


def boot_yaml(filters: str) -> str:
    return textwrap.dedent(
        """\
        node: {id: n1, service: ratings}
        listeners: [{name: out, port: 0}]
        snapshot:
          filters:
        """
    ) + textwrap.indent(textwrap.dedent(filters), "    ")


def test_an_entry_point_filter_loads_by_name(ab_tagger_installed: None) -> None:
    cls = load_filter_class("ab_tagger", None)
    assert cls.__name__ == "AbTagger"
    snap = snapshot(filters=[{"name": "ab_tagger", "config": {"percent_b": 100}}])
    chain = compile_chain(snap, "ratings", "inbound")
    ctx = RequestContext(b"GET", b"/", [(b"x-user", b"ann")])
    assert chain.on_request(ctx) is None
    assert ctx.request_extra == [(b"x-ab-bucket", b"b")]


def test_a_bad_plugin_config_refuses_the_snapshot_naming_file_line_and_field(
    ab_tagger_installed: None,
) -> None:
    text = boot_yaml(
        """\
        - name: ab_tagger
          config: {percent_b: 200}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(text, "boot.yaml")
    (where, message), *_ = info.value.problems
    assert where.startswith("boot.yaml:")
    assert where.endswith("snapshot.filters.0.config.percent_b")
    assert "100" in message


def test_an_unknown_filter_name_refuses_the_snapshot() -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(boot_yaml("- name: no_such_filter\n"), "boot.yaml")
    (where, message), *_ = info.value.problems
    assert where.endswith("snapshot.filters.0.name")
    assert "no filter named 'no_such_filter'" in message


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"path": "no.such.module:X"}, "cannot load"),
        ({"path": "nocolon"}, "package.module:Class"),
        ({"path": f"{HERE}:NotAFilter"}, "neither on_request nor on_response"),
        ({"path": f"{HERE}:HERE"}, "not a class"),
        ({"path": f"{HERE}:NoConfig", "config": {"x": 1}}, "takes no config"),
        ({"path": f"{HERE}:Shouter"}, "word"),
        ({"name": "jwt", "path": f"{HERE}:NoConfig"}, "exactly one of name"),
        ({}, "exactly one of name"),
    ],
)
def test_bad_filter_entries_are_refused(entry: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        snapshot(filters=[entry])


def test_load_errors_are_plugin_errors() -> None:
    with pytest.raises(PluginError):
        load_filter_class(None, "no.such.module:X")


def test_chain_order_is_limits_authn_authz_user_filters_tail(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(jwks(SigningKey("k", "EC")))
    snap = snapshot(
        policies=[
            {
                "service": "ratings",
                "rate_limits": [
                    {"key": "client_address", "requests_per_second": 5},
                    {
                        "key": "service",
                        "requests_per_second": 5,
                        "scope": "global",
                        "redis": {"url": "redis://127.0.0.1:1/0"},
                    },
                ],
            }
        ],
        access=[{"service": "ratings", "action": "allow", "rules": [{}]}],
        filters=[
            {"path": f"{HERE}:Shouter", "config": {"word": "hi"}},
            {"name": "jwt", "config": {"issuer": ISSUER, "jwks_file": str(tmp_path / "jwks.json")}},
            {"path": f"{HERE}:Identity"},
        ],
    )
    tail = ChainEntry("route", NoConfig())
    chain = compile_chain(snap, "ratings", "inbound", tail=[tail])
    assert chain.names == [
        "ratelimit",
        "ratelimit_global",
        "jwt",
        f"{HERE}:Identity",
        "authz",
        f"{HERE}:Shouter",
        "route",
    ]
    assert chain.has_response_phase


async def test_built_ins_without_config_are_left_out_and_chains_share_counters() -> None:
    chain = compile_chain(snapshot(), "ratings", "inbound")
    assert chain.names == []
    assert chain.on_request(RequestContext(b"GET", b"/", [])) is None
    await chain.aclose()


def test_direction_selects_which_user_filters_a_listener_runs() -> None:
    snap = snapshot(
        filters=[
            {"path": f"{HERE}:NoConfig", "direction": "inbound"},
            {"path": f"{HERE}:Shouter", "config": {"word": "x"}, "direction": "outbound"},
            {"path": f"{HERE}:Identity"},
        ]
    )
    assert compile_chain(snap, None, "outbound").names == [f"{HERE}:Identity", f"{HERE}:Shouter"]
    assert compile_chain(snap, "s", "inbound").names == [f"{HERE}:Identity", f"{HERE}:NoConfig"]


def test_policies_of_other_services_do_not_apply() -> None:
    snap = snapshot(
        policies=[
            {"service": "other", "rate_limits": [{"key": "service", "requests_per_second": 1}]}
        ],
        access=[{"service": "other", "action": "deny", "rules": [{}]}],
    )
    assert compile_chain(snap, "ratings", "inbound").names == []
    chain = compile_chain(snap, "other", "inbound")
    assert chain.names == ["ratelimit", "authz"]
    reply = chain.on_request(RequestContext(b"GET", b"/", []))
    assert isinstance(reply, LocalReply) and reply.status == 403


def test_an_identity_filter_feeds_authz_through_the_context() -> None:
    snap = snapshot(
        access=[
            {"service": "s", "action": "allow", "rules": [{"from": {"principals": ["reviews"]}}]}
        ],
        filters=[{"path": f"{HERE}:Identity"}],
    )
    chain = compile_chain(snap, "s", "inbound")
    assert chain.on_request(RequestContext(b"GET", b"/", [])) is None
    no_identity = compile_chain(snapshot(access=snap.access), "s", "inbound")
    assert no_identity.on_request(RequestContext(b"GET", b"/", [])) is not None


def test_a_fail_open_user_filter_is_configured_by_on_error() -> None:
    snap = snapshot(filters=[{"path": f"{__name__}:Broken", "on_error": "allow"}])
    chain = compile_chain(snap, "s", "inbound")
    assert chain.on_request(RequestContext(b"GET", b"/", [])) is None
    assert chain.counters.get("filter_errors", f"{__name__}:Broken") == 1


class Broken:
    def on_request(self, ctx: RequestContext) -> None:
        raise RuntimeError("broken")


def test_a_filter_that_cannot_be_built_refuses_the_snapshot(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.json")
    snap = snapshot(filters=[{"name": "jwt", "config": {"issuer": ISSUER, "jwks_file": missing}}])
    with pytest.raises(ConfigError) as info:
        compile_chain(snap, "s", "inbound")
    (where, message), *_ = info.value.problems
    assert where == "snapshot.filters.0"
    assert "cannot read jwks_file" in message
