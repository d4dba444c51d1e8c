"""New traceparent values from a pool of entropy, in both fast-path twins."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from types import ModuleType

import pytest

from meshproxy import _fastpath_trace_py as twin
from meshproxy.observe.propagation import parse_traceparent
from tests.twins import compiled_fastpath

POOL = twin.POOL
ALWAYS, NEVER = 1 << 64, 0
TRACEPARENT = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def test_values_are_w3c_traceparents_that_parse_back(fastpath: ModuleType) -> None:
    ids = fastpath.TraceIds(os.urandom)
    for bound, sampled in ((ALWAYS, True), (NEVER, False)):
        value = ids.traceparent(bound)
        assert TRACEPARENT.fullmatch(value)
        ctx = parse_traceparent(value)
        assert ctx is not None and ctx.sampled is sampled


def test_ids_are_the_entropy_in_order_as_lower_case_hex(fastpath: ModuleType) -> None:
    pool = bytes(range(256)) * (POOL // 256) + bytes(range(POOL % 256))
    ids = fastpath.TraceIds(lambda n: pool[:n])
    first, second = ids.traceparent(NEVER), ids.traceparent(ALWAYS)
    assert first == b"00-" + pool[:16].hex().encode() + b"-" + pool[16:24].hex().encode() + b"-00"
    assert second[3:35] == pool[24:40].hex().encode() and second.endswith(b"-01")


def test_a_pool_serves_its_ids_then_entropy_is_read_again(fastpath: ModuleType) -> None:
    reads: list[int] = []
    source = seeded(7)

    def entropy(n: int) -> bytes:
        reads.append(n)
        return source(n)

    ids = fastpath.TraceIds(entropy)
    values = [ids.traceparent(NEVER) for _ in range(POOL // 24 + 1)]
    assert reads == [POOL, POOL]
    assert len(set(values)) == len(values)
    ids.reset()  # a forked child starts from fresh entropy
    ids.traceparent(NEVER)
    assert reads == [POOL, POOL, POOL]


def test_all_zero_ids_are_skipped(fastpath: ModuleType) -> None:
    zero_trace = bytes(16) + b"\x01" * 8
    zero_span = b"\x02" * 16 + bytes(8)
    good = b"\x03" * 24
    pool = (zero_trace + zero_span + good) * (POOL // 72) + bytes(POOL % 72)
    ids = fastpath.TraceIds(lambda n: pool)
    assert ids.traceparent(ALWAYS) == b"00-" + b"03" * 16 + b"-" + b"03" * 8 + b"-01"


def test_the_compiled_module_gives_the_python_twins_values() -> None:
    compiled = compiled_fastpath()
    a, b = compiled.TraceIds(seeded(3)), twin.TraceIds(seeded(3))
    bound = twin.ratio_bound(0.3)
    assert [a.traceparent(bound) for _ in range(400)] == [b.traceparent(bound) for _ in range(400)]


def test_entropy_of_the_wrong_size_is_refused(fastpath: ModuleType) -> None:
    with pytest.raises(ValueError, match="entropy must return"):
        fastpath.TraceIds(lambda n: b"short").traceparent(NEVER)


def test_a_trace_is_sampled_when_the_low_64_bits_of_its_id_are_below_the_bound(
    fastpath: ModuleType,
) -> None:
    low = (1 << 63).to_bytes(8, "big")  # the low half of the trace id: exactly 2**63
    pool = (b"\x01" * 8 + low + b"\x02" * 8) * (POOL // 24)
    ids = fastpath.TraceIds(lambda n: pool)
    assert ids.traceparent(fastpath.ratio_bound(0.5)).endswith(b"-00")  # 2**63 is not below
    assert ids.traceparent((1 << 63) + 1).endswith(b"-01")
    assert ids.traceparent(fastpath.ratio_bound(1.0)).endswith(b"-01")


def test_sampling_by_the_id_follows_the_ratio(fastpath: ModuleType) -> None:
    ids = fastpath.TraceIds(seeded(11))
    bound = fastpath.ratio_bound(0.1)
    sampled = sum(ids.traceparent(bound).endswith(b"-01") for _ in range(20_000))
    assert 1_800 <= sampled <= 2_200  # 10% of 20,000, sd 42


def test_ratio_bound_is_opentelemetrys(fastpath: ModuleType) -> None:
    assert fastpath.ratio_bound(0.0) == 0
    assert fastpath.ratio_bound(0.01) == round(0.01 * 2**64)
    assert fastpath.ratio_bound(1.0) == 2**64
    with pytest.raises(ValueError, match="not in"):
        fastpath.ratio_bound(1.5)


class _Exchange:
    """The attributes ``TraceStart`` sets, unset until it does."""

    trace_id = span_id = user_agent = None
    trace_sampled = None


def _start(fastpath: ModuleType, bound: int, always: bool, carried=None):  # type: ignore[no-untyped-def]
    from meshproxy.observe.propagation import TRACE_NAMES

    ids = fastpath.TraceIds(seeded(5))
    return fastpath.TraceStart(ids, bound, carried or (lambda ex, h: []), always, TRACE_NAMES)


def test_trace_start_gives_a_request_without_trace_context_a_new_traceparent(
    fastpath: ModuleType,
) -> None:
    headers = [(b"Host", b"web"), (b"User-Agent", b"curl/8")]
    ex = _Exchange()
    [(name, value)] = _start(fastpath, ALWAYS, False)(ex, headers)
    assert name == b"traceparent" and TRACEPARENT.fullmatch(value) and value.endswith(b"-01")
    # Sampled: the span is built from the ids that went on the wire.
    assert ex.trace_id == value[3:35].decode() and ex.span_id == value[36:52].decode()
    assert ex.trace_sampled is True and ex.user_agent == b"curl/8"


def test_trace_start_leaves_an_unsampled_exchange_alone_unless_always(
    fastpath: ModuleType,
) -> None:
    ex = _Exchange()
    [(_, value)] = _start(fastpath, NEVER, False)(ex, [(b"Host", b"web")])
    assert value.endswith(b"-00")
    assert (ex.trace_id, ex.span_id, ex.trace_sampled, ex.user_agent) == (None, None, None, None)
    logged = _Exchange()  # an access log reads the ids of every exchange
    [(_, value)] = _start(fastpath, NEVER, True)(logged, [(b"Host", b"web")])
    assert logged.trace_id == value[3:35].decode() and logged.trace_sampled is False
    assert logged.user_agent == b""


@pytest.mark.parametrize(
    "field", [b"traceparent", b"TraceParent", b"b3", b"B3", b"X-B3-TraceId", b"x-b3-sampled"]
)
def test_trace_start_hands_a_request_carrying_trace_context_on(
    fastpath: ModuleType, field: bytes
) -> None:
    seen: list[tuple[object, list[tuple[bytes, bytes]]]] = []
    answer = [(b"traceparent", b"from-the-caller's-trace")]

    def carried(ex: object, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        seen.append((ex, headers))
        return answer

    ex = _Exchange()
    headers = [(b"Host", b"web"), (field, b"1")]
    assert _start(fastpath, ALWAYS, True, carried)(ex, headers) is answer
    assert seen == [(ex, headers)] and ex.trace_id is None


def test_trace_start_twins_agree() -> None:
    compiled = compiled_fastpath()
    bound = twin.ratio_bound(0.5)
    a, b = _start(compiled, bound, False), _start(twin, bound, False)
    for i in range(200):
        ea, eb = _Exchange(), _Exchange()
        headers = [(b"Host", b"web"), (b"X-Trace" if i % 2 else b"Accept", b"*")]
        assert a(ea, headers) == b(eb, headers)
        assert vars(ea) == vars(eb)
