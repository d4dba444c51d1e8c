"""The filter chain: order, short circuits, async hooks, failures, the response phase."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from meshproxy.policy import STOP, ChainEntry, FilterChain, LocalReply, Pending, RequestContext

TEAPOT = LocalReply(418, "teapot", ((b"X-Why", b"test"),))


def ctx(headers: list[tuple[bytes, bytes]] | None = None, path: bytes = b"/") -> RequestContext:
    return RequestContext(b"GET", path, headers or [], client_ip="10.0.0.1", now=100.0)


class Recorder:
    """A filter that logs its calls into a shared list and answers ``answer``."""

    def __init__(self, name: str, log: list[str], answer: Any = None) -> None:
        self.name = name
        self.log = log
        self.answer = answer

    def on_request(self, c: RequestContext) -> Any:
        self.log.append(f"req:{self.name}")
        return self.answer

    def on_response(self, c: RequestContext) -> None:
        self.log.append(f"resp:{self.name}")


class AsyncRecorder(Recorder):
    async def on_request(self, c: RequestContext) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        self.log.append(f"areq:{self.name}")
        return self.answer

    async def on_response(self, c: RequestContext) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.log.append(f"aresp:{self.name}")


class Boom:
    def on_request(self, c: RequestContext) -> None:
        raise RuntimeError("broken filter")


def chain(*filters: object, fail_open: bool = False) -> FilterChain:
    return FilterChain(
        [ChainEntry(getattr(f, "name", type(f).__name__), f, fail_open=fail_open) for f in filters]
    )


def test_request_phase_runs_in_order_and_response_phase_in_reverse() -> None:
    log: list[str] = []
    c = chain(Recorder("a", log), Recorder("b", log), Recorder("c", log))
    r = ctx()
    assert c.on_request(r) is None
    assert c.on_response(r) is None
    assert log == ["req:a", "req:b", "req:c", "resp:c", "resp:b", "resp:a"]


def test_local_reply_stops_the_chain_and_only_earlier_filters_see_the_response() -> None:
    log: list[str] = []
    c = chain(Recorder("a", log), Recorder("b", log, TEAPOT), Recorder("c", log))
    r = ctx()
    assert c.on_request(r) is TEAPOT
    r.status = 418
    c.on_response(r)
    assert log == ["req:a", "req:b", "resp:a"]


def test_stop_skips_later_filters_but_the_request_goes_on() -> None:
    log: list[str] = []
    c = chain(Recorder("a", log), Recorder("b", log, STOP), Recorder("c", log))
    r = ctx()
    assert c.on_request(r) is None
    c.on_response(r)
    assert log == ["req:a", "req:b", "resp:b", "resp:a"]


def test_only_defined_hooks_are_called() -> None:
    class RequestOnly:
        def on_request(self, c: RequestContext) -> None:
            c.scratch["seen"] = True

    c = chain(RequestOnly())
    assert not c.has_response_phase
    r = ctx()
    assert c.on_request(r) is None
    assert r.scratch == {"seen": True}


def test_a_raising_filter_answers_500_and_is_counted() -> None:
    log: list[str] = []
    c = chain(Boom(), Recorder("after", log))
    reply = c.on_request(ctx())
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.reason) == (500, "filter error")
    assert log == []
    assert c.counters.get("filter_errors", "Boom") == 1


def test_a_raising_filter_configured_fail_open_passes_the_request_on() -> None:
    log: list[str] = []
    c = FilterChain(
        [ChainEntry("boom", Boom(), fail_open=True), ChainEntry("b", Recorder("b", log))]
    )
    assert c.on_request(ctx()) is None
    assert c.on_request(ctx()) is None
    assert log == ["req:b", "req:b"]
    assert c.counters.get("filter_errors", "boom") == 2


def test_a_failing_filter_logs_at_powers_of_ten_not_every_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = FilterChain([ChainEntry("boom", Boom(), fail_open=True)])
    with caplog.at_level(logging.ERROR, logger="meshproxy.policy"):
        for _ in range(150):
            c.on_request(ctx())
    counts = [rec.getMessage().rpartition("=")[2] for rec in caplog.records]
    assert counts == ["1", "2", "4", "8", "10", "16", "32", "64", "100", "128"]


def test_a_hook_returning_nonsense_is_a_filter_error() -> None:
    class Nonsense:
        def on_request(self, c: RequestContext) -> int:
            return 42

    c = ctx()
    reply = chain(Nonsense()).on_request(c)
    assert isinstance(reply, LocalReply) and reply.status == 500
    assert c.ran == 0  # the nonsense filter answered: only it sees the response


def test_a_fail_open_filter_returning_nonsense_passes_the_request_to_the_next() -> None:
    class Nonsense:
        def on_request(self, c: RequestContext) -> int:
            return 42

    log: list[str] = []
    c = FilterChain(
        [ChainEntry("odd", Nonsense(), fail_open=True), ChainEntry("b", Recorder("b", log))]
    )
    assert c.on_request(ctx()) is None
    assert log == ["req:b"]
    assert c.counters.get("filter_errors", "odd") == 1


async def test_async_hook_returns_pending_and_the_rest_runs_in_one_await() -> None:
    log: list[str] = []
    c = chain(
        Recorder("a", log), AsyncRecorder("b", log), Recorder("c", log), AsyncRecorder("d", log)
    )
    r = ctx()
    pending = c.on_request(r)
    assert isinstance(pending, Pending)
    assert log == ["req:a"]  # nothing after the async filter ran yet
    assert await pending is None
    assert log == ["req:a", "areq:b", "req:c", "areq:d"]


async def test_async_local_reply_stops_the_chain() -> None:
    log: list[str] = []
    c = chain(AsyncRecorder("a", log, TEAPOT), Recorder("b", log))
    r = ctx()
    pending = c.on_request(r)
    assert isinstance(pending, Pending)
    assert await pending.run() is TEAPOT
    assert log == ["areq:a"]
    assert c.on_response(r) is None
    assert log == ["areq:a"]


async def test_async_stop_ends_the_request_phase() -> None:
    log: list[str] = []
    c = chain(AsyncRecorder("a", log, STOP), Recorder("b", log))
    pending = c.on_request(ctx())
    assert isinstance(pending, Pending)
    assert await pending is None
    assert log == ["areq:a"]


async def test_async_hook_that_raises_answers_500_or_passes_when_fail_open() -> None:
    class AsyncBoom:
        async def on_request(self, c: RequestContext) -> None:
            raise ValueError("no")

    closed = chain(AsyncBoom())
    pending = closed.on_request(ctx())
    assert isinstance(pending, Pending)
    reply = await pending
    assert isinstance(reply, LocalReply) and reply.status == 500
    opened = chain(AsyncBoom(), fail_open=True)
    pending = opened.on_request(ctx())
    assert isinstance(pending, Pending)
    assert await pending is None
    assert opened.counters.get("filter_errors", "AsyncBoom") == 1


async def test_a_sync_hook_may_return_an_awaitable_only_when_it_needs_one() -> None:
    class Sometimes:
        def on_request(self, c: RequestContext) -> Any:
            if c.header(b"x-slow") is None:
                return None
            return self.slow(c)

        async def slow(self, c: RequestContext) -> LocalReply:
            return TEAPOT

    c = chain(Sometimes())
    assert c.on_request(ctx()) is None
    pending = c.on_request(ctx([(b"X-Slow", b"1")]))
    assert isinstance(pending, Pending)
    assert await pending is TEAPOT


async def test_async_response_hooks_run_in_reverse_in_one_await() -> None:
    log: list[str] = []
    c = chain(Recorder("a", log), AsyncRecorder("b", log), Recorder("c", log))
    r = ctx()
    request_phase = c.on_request(r)
    assert isinstance(request_phase, Pending)  # b is async
    assert await request_phase is None
    log.clear()
    pending = c.on_response(r)
    assert isinstance(pending, Pending)
    assert log == ["resp:c"]
    await pending
    assert log == ["resp:c", "aresp:b", "resp:a"]


def test_response_hooks_edit_status_and_headers() -> None:
    class Editor:
        def on_response(self, c: RequestContext) -> None:
            c.status = 299
            c.set_response_header(b"X-Version", b"v2")
            c.remove_response_header(b"server")
            c.add_response_header(b"X-Added", b"1")

    c = chain(Editor())
    r = ctx()
    assert c.on_request(r) is None
    r.status = 200
    r.response_headers = [(b"Server", b"origin"), (b"X-Version", b"v1"), (b"Content-Length", b"2")]
    c.on_response(r)
    assert r.status == 299
    assert r.response_edited
    assert r.response_headers == [(b"Content-Length", b"2"), (b"X-Version", b"v2")]
    assert r.response_extra == [(b"X-Added", b"1")]


def test_a_response_hook_that_raises_turns_the_answer_into_500() -> None:
    class BoomResponse:
        def on_response(self, c: RequestContext) -> None:
            raise RuntimeError("x")

    c = chain(BoomResponse())
    r = ctx()
    r.status = 200
    c.on_response(r)
    assert r.status == 500 and r.response_edited


def test_header_lookup_needs_no_dict_and_headers_dict_joins_repeats() -> None:
    r = ctx([(b"X-User", b"ann"), (b"Accept", b"a"), (b"accept", b"b")])
    assert r.header(b"x-user") == b"ann"
    assert r.header(b"missing") is None
    assert r._headers is None  # nothing built for a lookup
    assert r.headers == {b"x-user": b"ann", b"accept": b"a, b"}
    assert r.header(b"accept") == b"a, b"


def test_path_only_drops_the_query() -> None:
    assert ctx(path=b"/a/b?x=1").path_only == b"/a/b"


def test_local_reply_refuses_headers_that_would_break_the_head() -> None:
    with pytest.raises(ValueError):
        LocalReply(403, "no", ((b"X-A", b"1\r\nX-Injected: 1"),))
    with pytest.raises(ValueError):
        LocalReply(42, "no")
    assert TEAPOT.header_block == b"X-Why: test\r\n"
    assert TEAPOT.header(b"x-why") == b"test"


async def test_aclose_closes_filters_that_hold_resources() -> None:
    closed: list[str] = []

    class Holder:
        def on_request(self, c: RequestContext) -> None:
            return None

        async def aclose(self) -> None:
            closed.append("x")

    await chain(Holder(), Recorder("a", [])).aclose()
    assert closed == ["x"]


def test_a_pending_phase_dropped_unawaited_can_be_closed_quietly() -> None:
    pending = chain(AsyncRecorder("a", [])).on_request(ctx())
    assert isinstance(pending, Pending)
    pending.close()  # the client went away: no "never awaited" warning


async def test_after_an_async_hook_a_raising_or_nonsense_sync_hook_answers_500() -> None:
    class Nonsense:
        def on_request(self, c: RequestContext) -> str:
            return "yes"

    class AsyncNonsense:
        async def on_request(self, c: RequestContext) -> str:
            return "yes"

    for c in (
        chain(AsyncRecorder("a", []), Boom()),
        chain(AsyncRecorder("a", []), Nonsense()),
        chain(AsyncNonsense()),
    ):
        pending = c.on_request(ctx())
        assert isinstance(pending, Pending)
        reply = await pending
        assert isinstance(reply, LocalReply) and reply.status == 500


async def test_async_response_phase_failures_turn_the_answer_into_500() -> None:
    class AsyncBoomResponse:
        async def on_response(self, c: RequestContext) -> None:
            raise RuntimeError("x")

    class BoomResponse:
        def on_response(self, c: RequestContext) -> None:
            raise RuntimeError("y")

    for filters in ((AsyncBoomResponse(),), (BoomResponse(), AsyncRecorder("b", []))):
        c = chain(*filters)
        r = ctx()
        r.status = 200
        pending = c.on_response(r)
        assert isinstance(pending, Pending)
        await pending
        assert r.status == 500


async def test_async_response_phase_skips_filters_that_did_not_take_part() -> None:
    log: list[str] = []
    c = chain(Recorder("a", log), Recorder("b", log, TEAPOT), AsyncRecorder("c", log))
    r = ctx()
    r.ran = 3  # as if every filter had continued
    pending = c.on_response(r)
    assert isinstance(pending, Pending)
    await pending
    assert log == ["aresp:c", "resp:b", "resp:a"]
    log.clear()
    r = ctx()
    assert c.on_request(r) is TEAPOT
    first = c.on_response(r)
    assert first is None
    assert log == ["req:a", "req:b", "resp:a"]


async def test_a_filter_failing_to_close_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    class BadClose:
        def on_request(self, c: RequestContext) -> None:
            return None

        async def aclose(self) -> None:
            raise OSError("gone")

    class GoodClose(BadClose):
        async def aclose(self) -> None:
            closed.append("good")

    with caplog.at_level(logging.ERROR, logger="meshproxy.policy"):
        await chain(BadClose(), GoodClose()).aclose()
    assert closed == ["good"]
    assert "closing filter=BadClose" in caplog.text
