"""Trace context on the wire: W3C ``traceparent`` and Zipkin B3 (single and multi).

Sans-IO: header fields in, ``TraceContext`` out, and back.  Ids are lower-case
hex strings (32 digits for a trace, 16 for a span), as the access log and the
headers carry them.  Malformed or all-zero ids are ignored (the exchange then
starts a new trace), never an error: the request must go through whatever the
client sent.

Extraction scans the header list once and lower-cases only names whose length
matches a trace header, so a request without trace headers costs one pass of
``len`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "TRACE_NAMES",
    "TRACE_NAME_LENGTHS",
    "TraceContext",
    "Writer",
    "extract",
    "inject",
    "new_span_id",
    "new_trace_id",
    "parse_b3_multi",
    "parse_b3_single",
    "parse_traceparent",
    "read",
    "writer",
]

W3C = "w3c"
B3 = "b3"
B3_MULTI = "b3multi"

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
TRACE_NAMES = frozenset(
    {
        b"traceparent",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)
TRACE_NAME_LENGTHS = frozenset(len(n) for n in TRACE_NAMES)


class TraceContext:
    """The caller's span: ``span_id`` becomes our span's parent.  ``sampled`` is
    None when the caller left the decision to us."""

    __slots__ = ("sampled", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, sampled: bool | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceContext) and (
            (self.trace_id, self.span_id, self.sampled)
            == (other.trace_id, other.span_id, other.sampled)
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id, self.sampled))

    def __repr__(self) -> str:
        return f"TraceContext({self.trace_id!r}, {self.span_id!r}, {self.sampled!r})"


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def parse_traceparent(value: bytes) -> TraceContext | None:
    """``version-traceid-parentid-flags``; a later version may append fields."""
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[:4]
    if not _is_hex(version, 2) or version == "ff" or not _is_hex(flags, 2):
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not _is_hex(trace_id, 32) or trace_id == _ZERO_TRACE:
        return None
    if not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def _b3_trace_id(text: str) -> str | None:
    # 64-bit B3 trace ids are widened to 128 bits by zero-padding on the left.
    if _is_hex(text, 16):
        text = "0" * 16 + text
    if _is_hex(text, 32) and text != _ZERO_TRACE:
        return text
    return None


def _b3_sampled(text: str) -> bool | None:
    if text in ("1", "d", "true"):
        return True
    if text in ("0", "false"):
        return False
    return None


def parse_b3_single(value: bytes) -> TraceContext | None:
    """``b3: traceid-spanid[-sampled[-parentspanid]]``; a lone sampling state
    (``0``, ``1``, ``d``) carries no ids and gives None."""
    try:
        parts = value.decode("ascii").strip().lower().split("-")
    except UnicodeDecodeError:
        return None
    if len(parts) < 2 or len(parts) > 4:
        return None
    trace_id = _b3_trace_id(parts[0])
    span_id = parts[1]
    if trace_id is None or not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    sampled = _b3_sampled(parts[2]) if len(parts) >= 3 else None
    if len(parts) >= 3 and sampled is None:
        return None
    return TraceContext(trace_id, span_id, sampled)


def parse_b3_multi(fields: dict[bytes, bytes]) -> TraceContext | None:
    """``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled``, ``X-B3-Flags`` (names lower-case)."""
    raw_trace, raw_span = fields.get(b"x-b3-traceid"), fields.get(b"x-b3-spanid")
    if raw_trace is None or raw_span is None:
        return None
    try:
        trace_id = _b3_trace_id(raw_trace.decode("ascii").strip().lower())
        span_id = raw_span.decode("ascii").strip().lower()
        sampled_text = fields.get(b"x-b3-sampled", b"").decode("ascii").strip().lower()
        debug = fields.get(b"x-b3-flags", b"").strip() == b"1"
    except UnicodeDecodeError:
        return None
    if trace_id is None or not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    sampled = True if debug else _b3_sampled(sampled_text)
    return TraceContext(trace_id, span_id, sampled)


def extract(
    headers: Iterable[tuple[bytes, bytes]], formats: Sequence[str] = (W3C, B3, B3_MULTI)
) -> TraceContext | None:
    """The caller's context from the first format (in ``formats`` order) that parses."""
    return read(headers, formats)[0]


_NO_FORMATS: tuple[str, ...] = ()


def read(
    headers: Iterable[tuple[bytes, bytes]], formats: Sequence[str] = (W3C, B3, B3_MULTI)
) -> tuple[TraceContext | None, tuple[str, ...]]:
    """The caller's context (as ``extract``) and the formats of ``formats``
    whose fields the request carries, parsable or not: the ones our span must
    replace on the way out."""
    found: dict[bytes, bytes] | None = None
    for name, value in headers:
        if len(name) in TRACE_NAME_LENGTHS:
            lower = name.lower()
            if lower in TRACE_NAMES:
                if found is None:
                    found = {}
                found.setdefault(lower, value)
    if found is None:
        return None, _NO_FORMATS
    present = tuple(
        fmt
        for fmt in formats
        if (fmt == W3C and b"traceparent" in found)
        or (fmt == B3 and b"b3" in found)
        or (fmt == B3_MULTI and not found.keys() <= {b"traceparent", b"b3"})
    )
    for fmt in formats:
        ctx: TraceContext | None = None
        if fmt == W3C and b"traceparent" in found:
            ctx = parse_traceparent(found[b"traceparent"])
        elif fmt == B3 and b"b3" in found:
            ctx = parse_b3_single(found[b"b3"])
        elif fmt == B3_MULTI:
            ctx = parse_b3_multi(found)
        if ctx is not None:
            return ctx, present
    return None, present


Writer = Callable[[bytes, bytes, bool, bytes], list[tuple[bytes, bytes]]]


def writer(formats: Sequence[str] = (W3C, B3, B3_MULTI)) -> Writer:
    """A function ``(trace_id, span_id, sampled, parent_span_id) -> fields``
    for ``formats``, ids as ASCII hex bytes (``parent_span_id`` may be empty).
    Chosen once per configuration: it runs on every traced request."""
    w3c, b3, multi = W3C in formats, B3 in formats, B3_MULTI in formats
    unknown = set(formats) - {W3C, B3, B3_MULTI}
    if unknown:
        raise ValueError(f"unknown propagation formats: {sorted(unknown)}")

    def write(tid: bytes, sid: bytes, sampled: bool, parent: bytes) -> list[tuple[bytes, bytes]]:
        flag = b"1" if sampled else b"0"
        out: list[tuple[bytes, bytes]] = []
        if w3c:
            out.append((b"traceparent", b"00-" + tid + b"-" + sid + b"-0" + flag))
        if b3:
            out.append((b"b3", tid + b"-" + sid + b"-" + flag))
        if multi:
            out += ((b"x-b3-traceid", tid), (b"x-b3-spanid", sid))
            if parent:
                out.append((b"x-b3-parentspanid", parent))
            out.append((b"x-b3-sampled", flag))
        return out

    return write


def inject(
    trace_id: str,
    span_id: str,
    sampled: bool,
    parent_span_id: str = "",
    formats: Sequence[str] = (W3C, B3, B3_MULTI),
) -> list[tuple[bytes, bytes]]:
    """Header fields that carry our span (``span_id``) to the next hop."""
    write = writer(formats)
    return write(trace_id.encode(), span_id.encode(), sampled, parent_span_id.encode())
