"""Route models: the fields of DESIGN section 3 and refusals naming the exact field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from meshproxy.config import ConfigError, parse_bootstrap
from meshproxy.config.routes import Rule
from meshproxy.config.snapshot import Snapshot


def refusal(rule: dict[str, Any], **table: Any) -> tuple[tuple[int | str, ...], str]:
    """The single (loc, message) a snapshot with this one rule is refused with."""
    data = {"routes": [{"service": "ratings", "rules": [{}, rule], **table}]}
    with pytest.raises(ValidationError) as err:
        Snapshot.model_validate(data)
    errors = err.value.errors()
    assert len(errors) == 1, errors
    return tuple(errors[0]["loc"]), errors[0]["msg"]


PREFIX = ("routes", 0, "rules", 1)


def test_full_rule_parses_into_typed_fields() -> None:
    rule = Rule.model_validate(
        {
            "match": [{"path": {"prefix": "/"}, "headers": {"x-a": {"present": True}}}],
            "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            "hash_on": {"cookie": "session"},
            "timeout": "2s",
            "retries": {
                "attempts": 2,
                "per_try_timeout": "500ms",
                "retry_on": ["reset", "retriable-status-codes"],
                "retriable_status_codes": [409],
                "backoff": {"base": "10ms", "max": "1s"},
                "retry_non_idempotent": True,
            },
            "headers": {
                "request": {"set": {"x-env": "prod"}, "remove": ["x-debug"]},
                "response": {"add": {"x-served-by": "mesh"}},
            },
            "rewrite": {"prefix": "/v2/", "host": "ratings.internal:8080"},
            "mirror": {"subset": "v2", "percent": 12.5},
            "fault": {"delay": {"fixed": "5s", "percent": 1}, "abort": {"status": 503}},
        }
    )
    assert rule.retries is not None and rule.retries.backoff.max == 1.0
    assert rule.retries.retriable_status_codes == [409]
    assert rule.mirror is not None and rule.mirror.percent == 12.5
    assert rule.fault is not None and rule.fault.abort is not None
    assert rule.fault.abort.percent == 100.0
    assert rule.fault.delay is not None and rule.fault.delay.fixed == 5.0


def test_bad_regex_is_refused_at_its_field() -> None:
    loc, msg = refusal({"match": [{}, {"headers": {"x-a": {"regex": "a(b"}}}]})
    assert loc == (*PREFIX, "match", 1, "headers", "x-a", "regex")
    assert "invalid regular expression" in msg


def test_all_weights_zero_is_refused() -> None:
    loc, msg = refusal({"backends": [{"subset": "v1", "weight": 0}, {"subset": "v2", "weight": 0}]})
    assert loc == (*PREFIX, "backends")
    assert "all weights are zero" in msg


def test_negative_weight_is_refused() -> None:
    loc, _ = refusal({"backends": [{"subset": "v1", "weight": -1}]})
    assert loc == (*PREFIX, "backends", 0, "weight")


def test_duplicate_backends_are_refused_at_the_second_one() -> None:
    loc, msg = refusal(
        {"backends": [{"subset": "v1"}, {"subset": "v2"}, {"service": "ratings", "subset": "v1"}]}
    )
    assert loc == (*PREFIX, "backends", 2)
    assert "duplicate of backends.0" in msg


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"fault": {"abort": {"status": 503, "percent": 100.5}}}, ("fault", "abort", "percent")),
        ({"fault": {"delay": {"fixed": "1s", "percent": 101}}}, ("fault", "delay", "percent")),
        ({"mirror": {"subset": "v2", "percent": 150}}, ("mirror", "percent")),
    ],
)
def test_percentage_over_100_is_refused(rule: dict[str, Any], field: tuple[str, ...]) -> None:
    loc, msg = refusal(rule)
    assert loc == (*PREFIX, *field)
    assert "less than or equal to 100" in msg


def test_per_try_timeout_longer_than_route_timeout_is_refused() -> None:
    loc, msg = refusal({"timeout": "1s", "retries": {"per_try_timeout": "1500ms"}})
    assert loc == (*PREFIX, "retries", "per_try_timeout")
    assert msg == "the per-try timeout is longer than the route timeout"


def test_listed_status_codes_need_their_retry_on_entry_and_vice_versa() -> None:
    loc, _ = refusal({"retries": {"retry_on": ["5xx"], "retriable_status_codes": [409]}})
    assert loc == (*PREFIX, "retries", "retry_on")
    loc, _ = refusal({"retries": {"retry_on": ["retriable-status-codes"]}})
    assert loc == (*PREFIX, "retries", "retriable_status_codes")
    loc, _ = refusal(
        {
            "retries": {
                "retry_on": ["retriable-status-codes"],
                "retriable_status_codes": [503, 700],
            }
        }
    )
    assert loc == (*PREFIX, "retries", "retriable_status_codes", 1)


def test_header_edits_cannot_inject_lines_or_touch_framing_headers() -> None:
    loc, msg = refusal({"headers": {"request": {"add": {"x-a": "1\r\nx-b: 2"}}}})
    assert loc == (*PREFIX, "headers", "request", "add", "x-a")
    assert "control characters" in msg
    loc, msg = refusal({"headers": {"response": {"remove": ["x-a", "Transfer-Encoding"]}}})
    assert loc == (*PREFIX, "headers", "response", "remove", 1)
    loc, msg = refusal({"headers": {"request": {"set": {"Host": "x"}}}})
    assert "rewrite.host" in msg
    loc, _ = refusal({"headers": {"request": {"set": {"bad name": "x"}}}})
    assert loc == (*PREFIX, "headers", "request", "set", "bad name")


def test_path_matches_must_start_with_a_slash() -> None:
    loc, _ = refusal({"match": [{"path": {"prefix": "api"}}]})
    assert loc == (*PREFIX, "match", 0, "path", "prefix")


def test_prefix_rewrite_cannot_follow_a_regex_path_match() -> None:
    loc, _ = refusal({"match": [{"path": {"regex": "/a.*"}}], "rewrite": {"prefix": "/b"}})
    assert loc == (*PREFIX, "match", 0, "path", "regex")


def test_hash_on_needs_exactly_one_source() -> None:
    loc, msg = refusal({"hash_on": {"header": "x-user", "cookie": "s"}})
    assert loc == (*PREFIX, "hash_on")
    assert "exactly one" in msg


def test_backoff_max_below_base_is_refused() -> None:
    loc, _ = refusal({"retries": {"backoff": {"base": "100ms", "max": "50ms"}}})
    assert loc == (*PREFIX, "retries", "backoff", "max")


def test_hosts_must_be_lower_case_names_or_wildcards() -> None:
    data = {"routes": [{"service": "r", "hosts": ["ok.example", "Bad_Host"], "rules": [{}]}]}
    with pytest.raises(ValidationError) as err:
        Snapshot.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("routes", 0, "hosts")


def test_a_table_without_rules_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        Snapshot.model_validate({"routes": [{"service": "r", "rules": []}]})
    assert err.value.errors()[0]["loc"] == ("routes", 0, "rules")


def test_bootstrap_errors_carry_file_line_and_snapshot_path() -> None:
    text = (
        "node: {id: a, service: b}\n"
        "snapshot:\n"
        "  routes:\n"
        "    - service: ratings\n"
        "      rules:\n"
        "        - timeout: 1s\n"
        "          retries: {per_try_timeout: 2s}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(text, "b.yaml")
    assert err.value.problems == [
        (
            "b.yaml:7: snapshot.routes.0.rules.0.retries.per_try_timeout",
            "the per-try timeout is longer than the route timeout",
        )
    ]


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ({"match": [{"method": "GE T"}]}, ("match", 0, "method"), "not a valid HTTP token"),
        ({"match": [{"headers": {"x a": {"present": True}}}]}, ("match", 0, "headers"), "token"),
        (
            {"match": [{"path": {"exact": "/a", "prefix": "/"}}]},
            ("match", 0, "path"),
            "exactly one",
        ),
        ({"match": [{"path": {"present": True}}]}, ("match", 0, "path", "present"), "always"),
        ({"retries": {"backoff": {"base": "0ms"}}}, ("retries", "backoff", "base"), "above zero"),
        ({"rewrite": {"prefix": "v2"}}, ("rewrite", "prefix"), "starts with '/'"),
        ({"rewrite": {"host": "a b"}}, ("rewrite", "host"), "not a host"),
        ({"mirror": {"percent": 5}}, ("mirror",), "needs a subset, a service"),
        ({"fault": {}}, ("fault",), "needs a delay, an abort"),
        ({"fault": {"abort": {"status": 99}}}, ("fault", "abort", "status"), "greater than"),
    ],
)
def test_malformed_rule_fields_are_refused_at_their_path(
    rule: dict[str, Any], field: tuple[str | int, ...], words: str
) -> None:
    loc, msg = refusal(rule)
    assert loc == (*PREFIX, *field)
    assert words in msg
