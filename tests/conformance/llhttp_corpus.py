"""Read llhttp's markdown test corpus and replay it through the fast path.

A case is a ``<!-- meta={...} -->`` comment, an ```http block (the input) and a
```log block (the events llhttp emitted).  ``case_input`` reproduces llhttp's
``test/md-test.ts`` conversion of the block to bytes; ``expected_outcome``
folds the log into messages; ``replay`` drives our parser the way the proxy
does (heads from a growing buffer, bodies by framing) over any split of the
input.  Nothing here decides pass or fail: the tests compare the two outcomes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "llhttp"
FILES = [
    f"{kind}/{path.name}"
    for kind in ("request", "response")
    for path in sorted((CORPUS / kind).glob("*.md"))
]


@dataclass
class Case:
    file: str
    heading: str
    meta: dict[str, object]
    http: str
    log: str

    @property
    def id(self) -> str:
        return f"{self.file} :: {self.heading}"

    @property
    def kind(self) -> str:
        return "response" if str(self.meta["type"]).startswith("response") else "request"


def load_cases(file: str) -> list[Case]:
    """Every case of one corpus file, named by its heading (``(2)``, ``(3)``
    suffixes when a file repeats a heading)."""
    lines = (CORPUS / file).read_text(encoding="utf-8").split("\n")
    cases: list[Case] = []
    heading, meta = "", None
    seen: dict[str, int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("<!-- meta="):
            meta = json.loads(line[len("<!-- meta=") : line.rindex("-->")])
        elif line.startswith("```http"):
            block, i = _block(lines, i + 1)
            while not lines[i].startswith("```log"):
                i += 1
            log, i = _block(lines, i + 1)
            assert meta is not None, f"{file}: case without meta near line {i}"
            seen[heading] = seen.get(heading, 0) + 1
            name = heading if seen[heading] == 1 else f"{heading} ({seen[heading]})"
            cases.append(Case(file, name, meta, block, log))
            meta = None
        i += 1
    return cases


def _block(lines: list[str], i: int) -> tuple[str, int]:
    start = i
    while not lines[i].startswith("```"):
        i += 1
    return "\n".join(lines[start:i]) + "\n", i


def case_input(http: str) -> bytes:
    """The bytes llhttp's md-test feeds for an ```http block (same steps, same
    order; the string reaches the parser UTF-8 encoded)."""
    text = http[:-1] if http.endswith("\n") else http
    text = re.sub(r"\\(\r\n|\r|\n)", "", text)
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    text = text.replace("\\r", "\r").replace("\\n", "\n")
    text = text.replace("\\t", "\t").replace("\\f", "\f")
    text = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), text)
    return text.encode("utf-8")


@dataclass
class Message:
    method: bytes = b""
    target: bytes = b""
    status: int = 0
    reason: bytes = b""
    version: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunked: bool = False
    content_length: int = -1  # -1: no Content-Length framing
    head_end: int = -1
    line_end: int = -1  # llhttp: offset of the CRLF that ends the request line
    body: bytes = b""
    complete: bool = False
    parsed: object = None  # ours: the RequestHead / ResponseHead


@dataclass
class Outcome:
    messages: list[Message] = field(default_factory=list)
    error: str | None = None
    status: int | None = None  # ours: ParseError.status
    tunnel: bool = False  # stopped after a CONNECT / Upgrade / 101
    eof: int = 0  # llhttp's finish state: 0 idle, 1 the close ends a body, 2 mid-message

    @property
    def complete(self) -> list[Message]:
        return [m for m in self.messages if m.complete]


_EVENT = re.compile(r"^off=(\d+|NULL) (.*)$")
_SPAN = re.compile(r'^len=(\d+) span\[(\w+)\]=(cr|lf|"(.*))$', re.S)


def expected_outcome(log: str) -> Outcome:
    """Fold llhttp's event log into messages (heads, bodies, trailers)."""
    out = Outcome()
    msg: Message | None = None
    last_span = ""
    in_trailers = False
    for raw in log.replace("\\t", "\t").replace("\\f", "\f").split("\n"):
        m = _EVENT.match(raw)
        if not m:
            continue
        off, event = m.group(1), m.group(2)
        if event == "message begin":
            msg = Message()
            out.messages.append(msg)
            last_span, in_trailers = "", False
        elif event.startswith("len="):
            s = _SPAN.match(event)
            assert s and msg is not None, raw
            size, name = int(s.group(1)), s.group(2)
            if s.group(3) == "cr":
                data = b"\r"
            elif s.group(3) == "lf":
                data = b"\n"
            else:
                data = s.group(4).encode("utf-8")[:size]
            fields = msg.trailers if in_trailers else msg.headers
            if name == "method":
                msg.method += data
            elif name == "url":
                msg.target += data
            elif name == "status":
                msg.reason += data
            elif name == "body":
                msg.body += data
            elif name == "header_field":
                if last_span != "header_field":
                    fields.append((b"", b""))
                fields[-1] = (fields[-1][0] + data, fields[-1][1])
            elif name == "header_value":
                if last_span not in ("header_field", "header_value"):
                    fields.append((b"", b""))
                fields[-1] = (fields[-1][0], fields[-1][1] + data)
            last_span = name
        elif event.startswith("headers complete"):
            assert msg is not None
            attrs = dict(kv.split("=", 1) for kv in event.split()[2:])
            major, minor = attrs["v"].split("/")
            msg.version = int(major) * 10 + int(minor)
            flags = int(attrs["flags"], 16)
            msg.chunked = bool(flags & 0x8)
            if flags & 0x20:
                msg.content_length = int(attrs["content_length"])
            if "status" in attrs:
                msg.status = int(attrs["status"])
            msg.head_end = int(off)
            msg.headers = [(n, v.strip(b" \t")) for n, v in msg.headers]
        elif event.startswith("chunk header len=0"):
            in_trailers = True
        elif event == "message complete":
            assert msg is not None
            msg.complete = True
            msg.trailers = [(n, v.strip(b" \t")) for n, v in msg.trailers]
        elif event.startswith("error"):
            code = int(event.split()[1].split("=")[1])
            if code in (22, 23):  # paused for CONNECT/Upgrade, or an HTTP/2 preface
                out.tunnel = True
                if code == 23:
                    out.error = event
            else:
                out.error = event
        elif event == "version complete" and msg is not None and not msg.reason:
            msg.line_end = int(off)
        elif event.startswith("finish="):
            out.eof = int(event.split("=")[1])
        elif event.endswith("complete"):
            last_span = last_span if "header" in event else ""
    return out


def replay(fp: ModuleType, kind: str, chunks: list[bytes]) -> Outcome:
    """Run ``chunks`` (one connection's bytes, as they arrive) through the
    parser module ``fp`` like the proxy: heads from the growing buffer, bodies
    by framing, stop at a tunnel, refuse data after ``keep_alive`` is false."""
    out = Outcome()
    buf = b""
    pos = 0
    state = "head"
    msg = Message()
    decoder = None
    remaining = 0
    for chunk in chunks:
        buf += chunk
        while True:
            done = False
            try:
                if state == "head":
                    if kind == "request":
                        got = fp.parse_request_head(buf, pos)
                    else:
                        got = fp.parse_response_head(buf, pos)
                    if got is None:
                        break
                    head, pos = got
                    msg = _message(fp, head, kind, pos)
                    out.messages.append(msg)
                    if head.body == fp.BODY_LENGTH:
                        state, remaining = "length", head.content_length
                        done = remaining == 0
                    elif head.body == fp.BODY_CHUNKED:
                        state = "chunked"
                        decoder = fp.ChunkedDecoder(response=kind == "response")
                    elif head.body == fp.BODY_UNTIL_CLOSE:
                        state = "close"
                    else:
                        done = True
                elif state == "length":
                    take = min(remaining, len(buf) - pos)
                    msg.body += buf[pos : pos + take]
                    pos += take
                    remaining -= take
                    if remaining:
                        break
                    done = True
                elif state == "chunked":
                    assert decoder is not None
                    if pos == len(buf):
                        break
                    pieces, consumed = decoder.feed(buf[pos:])
                    msg.body += b"".join(pieces)
                    pos += consumed
                    if not decoder.done:
                        break
                    msg.trailers = list(decoder.trailers)
                    done = True
                elif state == "close":
                    msg.body += buf[pos:]
                    pos = len(buf)
                    break
                else:  # closed: only stray empty lines may follow
                    if buf[pos:].strip(b"\r\n"):
                        out.error = "data after the connection was closed"
                        return out
                    break
            except fp.ParseError as exc:
                out.error, out.status = str(exc), exc.status
                return out
            if done:
                msg.complete = True
                head = msg.parsed
                if _is_tunnel(fp, head, kind):
                    out.tunnel = True
                    return out
                interim = kind == "response" and head.status < 200
                state = "head" if head.keep_alive or interim else "closed"
    if state == "close":
        out.eof = 1
    elif state not in ("head", "closed") or buf[pos:].strip(b"\r\n"):
        out.eof = 2
    return out


def _message(fp: ModuleType, head: object, kind: str, end: int) -> Message:
    msg = Message(head_end=end)
    msg.parsed = head
    msg.version = head.version  # type: ignore[attr-defined]
    msg.headers = list(head.headers)  # type: ignore[attr-defined]
    body = head.body  # type: ignore[attr-defined]
    msg.chunked = body == fp.BODY_CHUNKED
    if body == fp.BODY_LENGTH:
        msg.content_length = head.content_length  # type: ignore[attr-defined]
    if kind == "request":
        msg.method, msg.target = head.method, head.target  # type: ignore[attr-defined]
    else:
        msg.status, msg.reason = head.status, head.reason  # type: ignore[attr-defined]
    return msg


def _is_tunnel(fp: ModuleType, head: object, kind: str) -> bool:
    if kind == "response":
        return bool(head.body == fp.BODY_TUNNEL)  # type: ignore[attr-defined]
    return head.method == b"CONNECT" or head.upgrade is not None  # type: ignore[attr-defined]


def with_host(data: bytes, expected: Outcome) -> bytes:
    """``data`` with ``Host: h`` added to every HTTP/1.1 request head that
    llhttp's log shows without one (we refuse those, RFC 9112 section 3.2)."""
    out = data
    for msg in reversed(expected.messages):
        names = {name.lower() for name, _ in msg.headers}
        if msg.line_end >= 0 and msg.version == 11 and b"host" not in names:
            at = msg.line_end + 2
            out = out[:at] + b"Host: h\r\n" + out[at:]
    return out
