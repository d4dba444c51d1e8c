from pathlib import Path

import pytest

from meshproxy.config import ConfigError, load_bootstrap, parse_bootstrap

EXAMPLE = Path(__file__).parents[3] / "config" / "examples" / "reviews.yaml"


def test_design_example_loads_with_durations_in_seconds() -> None:
    boot = load_bootstrap(EXAMPLE)
    rule = boot.snapshot.routes[0].rules[0]
    assert rule.timeout == 2.0
    assert rule.retries is not None and rule.retries.per_try_timeout == 0.5
    assert [b.weight for b in rule.backends] == [90, 10]
    assert boot.listeners[2].protocol == "tcp"


def test_error_names_file_line_and_field() -> None:
    text = "node: {id: a, service: b}\nlisteners:\n  - {name: x, port: 99999}\n"
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(text, "y.yaml")
    assert err.value.problems[0][0] == "y.yaml:3: listeners.0.port"
    assert "less than or equal to 65535" in err.value.problems[0][1]


def test_duplicate_keys_are_refused_not_collapsed() -> None:
    text = "node: {id: a, service: b}\nnode: {id: c, service: d}\n"
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(text, "d.yaml")
    assert err.value.problems == [("d.yaml:2: node", "duplicate key")]


def test_duration_without_unit_is_refused() -> None:
    text = "node: {id: a, service: b}\ndrain_timeout: 5\n"
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(text)
    assert "needs a unit" in str(err.value)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_bootstrap("node: {id: a, service: b, colour: red}\n")
    assert "node.colour" in str(err.value)


def test_local_app_belongs_to_inbound_http_listeners_only() -> None:
    text = (
        "node: {id: a, service: b}\nlisteners:\n"
        "  - {name: out, direction: outbound, port: 1, local_app: 127.0.0.1:80}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(text, "l.yaml")
    assert err.value.problems[0][0] == "l.yaml:3: listeners.0"
    assert "'local_app' is for inbound http listeners" in err.value.problems[0][1]
    gateway = parse_bootstrap(
        "node: {id: a, service: b}\nlisteners:\n  - {name: gw, direction: inbound, port: 1}\n"
    )
    assert gateway.listeners[0].local_app is None
