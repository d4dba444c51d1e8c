"""Trace context headers: W3C traceparent, B3 single and multi, in and out."""

from __future__ import annotations

import pytest

from meshproxy.observe.propagation import (
    TraceContext,
    extract,
    inject,
    parse_b3_single,
    parse_traceparent,
    read,
    writer,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_traceparent_gives_ids_and_sampled_flag() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode()) == TraceContext(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == TraceContext(TRACE, SPAN, False)


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
        "garbage",
        "",
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value.encode()) is None


def test_a_future_traceparent_version_may_carry_more_fields() -> None:
    ctx = parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever".encode())
    assert ctx == TraceContext(TRACE, SPAN, True)


def test_b3_single_with_64_bit_trace_id_is_widened() -> None:
    ctx = parse_b3_single(f"{TRACE[16:]}-{SPAN}-1".encode())
    assert ctx == TraceContext("0" * 16 + TRACE[16:], SPAN, True)


@pytest.mark.parametrize(("flag", "sampled"), [("1", True), ("d", True), ("0", False)])
def test_b3_single_sampling_states(flag: str, sampled: bool) -> None:
    assert parse_b3_single(f"{TRACE}-{SPAN}-{flag}-{'1' * 16}".encode()) == TraceContext(
        TRACE, SPAN, sampled
    )


def test_b3_single_without_sampling_leaves_the_decision_to_us() -> None:
    assert parse_b3_single(f"{TRACE}-{SPAN}".encode()) == TraceContext(TRACE, SPAN, None)
    assert parse_b3_single(b"0") is None  # a lone "do not sample" carries no ids


def test_b3_multi_headers_in_any_case() -> None:
    headers = [
        (b"X-B3-TraceId", TRACE.encode()),
        (b"X-B3-SpanId", SPAN.encode()),
        (b"X-B3-Sampled", b"0"),
    ]
    assert extract(headers) == TraceContext(TRACE, SPAN, False)
    debug = [*headers[:2], (b"X-B3-Flags", b"1")]
    assert extract(debug) == TraceContext(TRACE, SPAN, True)


def test_extract_prefers_the_first_configured_format() -> None:
    other = "1" * 32
    headers = [
        (b"b3", f"{other}-{SPAN}-1".encode()),
        (b"Traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
    ]
    assert extract(headers, ("w3c", "b3")).trace_id == TRACE  # type: ignore[union-attr]
    assert extract(headers, ("b3", "w3c")).trace_id == other  # type: ignore[union-attr]
    assert extract(headers, ("b3multi",)) is None


def test_extract_falls_back_when_the_first_format_is_malformed() -> None:
    headers = [(b"traceparent", b"nonsense"), (b"b3", f"{TRACE}-{SPAN}-1".encode())]
    assert extract(headers) == TraceContext(TRACE, SPAN, True)


def test_no_trace_headers_gives_none() -> None:
    assert extract([(b"Host", b"ratings"), (b"Accept", b"*/*")]) is None


def test_inject_writes_our_span_in_every_format() -> None:
    fields = dict(inject(TRACE, SPAN, True, parent_span_id="a" * 16))
    assert fields[b"traceparent"] == f"00-{TRACE}-{SPAN}-01".encode()
    assert fields[b"b3"] == f"{TRACE}-{SPAN}-1".encode()
    assert fields[b"x-b3-traceid"] == TRACE.encode()
    assert fields[b"x-b3-spanid"] == SPAN.encode()
    assert fields[b"x-b3-parentspanid"] == b"a" * 16
    assert fields[b"x-b3-sampled"] == b"1"


def test_inject_round_trips_through_extract_for_each_format() -> None:
    for fmt in ("w3c", "b3", "b3multi"):
        out = inject(TRACE, SPAN, False, formats=(fmt,))
        assert extract(out, (fmt,)) == TraceContext(TRACE, SPAN, False)


def test_read_names_the_formats_present_even_when_they_do_not_parse() -> None:
    ctx, present = read(
        [(b"Traceparent", b"not-a-traceparent"), (b"X-B3-Sampled", b"0"), (b"host", b"a")]
    )
    assert ctx is None
    assert present == ("w3c", "b3multi")
    ctx, present = read([(b"b3", f"{TRACE}-{SPAN}-1".encode())], formats=("w3c", "b3"))
    assert ctx == TraceContext(TRACE, SPAN, True) and present == ("b3",)
    assert read([(b"host", b"a")]) == (None, ())


def test_writer_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="jaeger"):
        writer(("w3c", "jaeger"))
