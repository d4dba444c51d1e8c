"""The demo's sidecar config and its report of the split it observed."""

import socket
from collections import Counter

import pytest
import yaml

from meshproxy.config import parse_bootstrap
from meshproxy.demo.__main__ import parse_args
from meshproxy.demo.dynamic import canary, dynamic_bootstrap
from meshproxy.demo.sidecar import demo_bootstrap, port_or_any
from meshproxy.demo.traffic import Traffic


def test_demo_routes_ratings_90_10_over_v1_and_v2() -> None:
    boot = parse_bootstrap(yaml.safe_dump(demo_bootstrap(9001, 9002, 0, 0)), "demo")
    endpoints = boot.snapshot.services["ratings"].endpoints
    assert [(e.port, e.labels) for e in endpoints] == [
        (9001, {"version": "v1"}),
        (9002, {"version": "v2"}),
    ]
    (rule,) = boot.snapshot.routes[0].rules
    assert [(b.subset, b.weight) for b in rule.backends] == [("v1", 90), ("v2", 10)]
    assert [(listener.name, listener.port) for listener in boot.listeners] == [("outbound", 0)]


def test_a_busy_preferred_port_falls_back_to_any() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert port_or_any(busy.getsockname()[1]) == 0


def test_split_line_gives_shares_counts_and_errors() -> None:
    traffic = Traffic(Counter(v1=1800, v2=199), Counter({"status 502": 1}), 1.0)
    assert traffic.answered == 1999
    assert traffic.split_line() == (
        "split observed: v1 90.0% (1800), v2 10.0% (199); errors 1 {'status 502': 1}"
    )


def test_split_line_names_a_version_that_got_nothing() -> None:
    line = Traffic(Counter(v1=10), Counter(), 1.0).split_line()
    assert line == "split observed: v1 100.0% (10), v2 0.0% (0); errors 0"


def test_zero_requests_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--requests", "0"])


def test_dynamic_sidecars_have_no_snapshot_and_poll_the_control_plane() -> None:
    config = dynamic_bootstrap(
        "ratings-v1", "ratings", "http://127.0.0.1:1", "t", 0, local_app_port=9001, upstreams=[]
    )
    boot = parse_bootstrap(yaml.safe_dump(config), "demo")
    assert boot.control_plane is not None and boot.control_plane.url == "http://127.0.0.1:1"
    assert boot.node.upstreams == [] and boot.snapshot.routes == []
    assert [(li.name, li.local_app) for li in boot.listeners] == [("inbound", "127.0.0.1:9001")]


def test_the_canary_body_weighs_v1_against_v2() -> None:
    (rule,) = canary(50, 50)["rules"]
    assert rule["backends"] == [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}]


def test_static_mode_is_behind_a_flag() -> None:
    assert not parse_args([]).static
    assert parse_args(["--static"]).static
