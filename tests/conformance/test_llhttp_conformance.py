"""llhttp's strict-mode corpus, replayed through both fast-path implementations.

Each case must give llhttp's verdict and the same messages (method, target,
status, reason, version, headers, framing, body, trailers), or be listed with
its reason in ``llhttp_skips.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.conformance.llhttp_corpus import (
    CORPUS,
    FILES,
    Case,
    Message,
    Outcome,
    case_input,
    expected_outcome,
    load_cases,
    replay,
    with_host,
)

STRICT_TYPES = ("request", "response", "request-finish", "response-finish")


@dataclass(frozen=True)
class Listed:
    kind: str
    reason: str


def _listed() -> dict[str, Listed]:
    out: dict[str, Listed] = {}
    text = (Path(__file__).parent / "llhttp_skips.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            file, heading, kind, reason = (part.strip() for part in line.split(" :: ", 3))
            out[f"{file} :: {heading}"] = Listed(kind, reason)
    return out


CASES = [case for file in FILES for case in load_cases(file)] if CORPUS.is_dir() else []
LISTED = _listed()


def _outcome_of(case: Case, fastpath: ModuleType) -> tuple[bytes, Outcome]:
    data = case_input(case.http)
    if LISTED.get(case.id, Listed("", "")).kind == "add-host":
        data = with_host(data, expected_outcome(case.log))
    return data, replay(fastpath, case.kind, [data])


def _same_message(ours: Message, theirs: Message, *, host_added: bool, offsets: bool) -> None:
    headers = ours.headers
    if host_added:
        headers = [(n, v) for n, v in headers if (n, v) != (b"Host", b"h")]
    assert (ours.method, ours.target) == (theirs.method, theirs.target)
    assert (ours.status, ours.reason, ours.version) == (
        theirs.status,
        theirs.reason,
        theirs.version,
    )
    assert headers == theirs.headers
    if offsets:
        assert ours.head_end == theirs.head_end
    if ours.chunked:
        assert theirs.chunked, "we read a chunked body, llhttp did not"
    elif ours.content_length >= 0:
        assert ours.content_length == theirs.content_length
    else:
        until_close = ours.parsed.body == 3  # type: ignore[attr-defined]
        assert not (theirs.chunked and until_close), "llhttp framed it chunked"
    assert ours.body == theirs.body
    assert ours.complete == theirs.complete
    if theirs.complete and ours.chunked:
        assert ours.trailers == theirs.trailers


def _same_as_llhttp(case: Case, ours: Outcome, *, host_added: bool = False) -> None:
    theirs = expected_outcome(case.log)
    assert (ours.error is None) == (theirs.error is None), (
        f"llhttp: {theirs.error or 'accepts'}; ours: {ours.error or 'accepts'}"
    )
    assert len(ours.complete) == len(theirs.complete)
    if theirs.error is None:
        assert ours.tunnel == theirs.tunnel
        heads = [m for m in theirs.messages if m.head_end >= 0]
        assert len(ours.messages) == len(heads)
        pairs = zip(ours.messages, heads, strict=True)
    else:
        pairs = zip(ours.complete, theirs.complete, strict=True)
    for mine, other in pairs:
        _same_message(mine, other, host_added=host_added, offsets=not host_added)
    if str(case.meta["type"]).endswith("-finish"):
        assert ours.eof == theirs.eof


def test_corpus_is_beside_the_checkout() -> None:
    assert CORPUS.is_dir(), f"llhttp corpus missing at {CORPUS} (shared/ must sit beside the repo)"
    assert len(CASES) > 150


def test_every_listed_case_exists() -> None:
    ids = {case.id for case in CASES}
    assert sorted(set(LISTED) - ids) == []


def test_cases_are_named_uniquely() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


def test_every_non_strict_case_is_listed_as_skipped() -> None:
    loose = [c.id for c in CASES if c.meta["type"] not in STRICT_TYPES or "pause" in c.meta]
    assert [i for i in loose if LISTED.get(i, Listed("", "")).kind != "skip"] == []


def test_inputs_follow_llhttp_offsets() -> None:
    """The md conversion is right when llhttp's offsets land on our bytes:
    every span's offset and length must point at the span's text."""
    checked = 0
    for case in CASES:
        data = case_input(case.http)
        for line in case.log.replace("\\t", "\t").replace("\\f", "\f").split("\n"):
            if " span[" in line and '="' in line:
                off = int(line.split()[0][4:])
                size = int(line.split()[1][4:])
                text = line.split('="', 1)[1].encode("utf-8")[:size]
                assert data[off : off + size] == text, (case.id, line)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_llhttp_case(fastpath: ModuleType, case: Case) -> None:
    listed = LISTED.get(case.id)
    if listed is not None and listed.kind == "skip":
        pytest.skip(listed.reason)
    assert case.meta["type"] in STRICT_TYPES, "a non-strict case must be listed as skipped"
    data = case_input(case.http)
    ours = replay(fastpath, case.kind, [data])
    if listed is None:
        _same_as_llhttp(case, ours)
    elif listed.kind.startswith("refuse "):
        assert expected_outcome(case.log).error is None
        assert ours.status == int(listed.kind.split()[1]), ours.error
    elif listed.kind == "accept":
        assert expected_outcome(case.log).error is not None
        assert ours.error is None
    else:
        assert listed.kind == "add-host", listed
        assert (ours.status, ours.error) == (400, "400 missing host")
        _same_as_llhttp(case, _outcome_of(case, fastpath)[1], host_added=True)


SCANNED = [
    c
    for c in CASES
    if not c.meta.get("noScan") and LISTED.get(c.id, Listed("", "")).kind in ("", "add-host")
]


def _summary(outcome: Outcome) -> tuple[object, ...]:
    """What must not depend on the split (a refused message's partial body may)."""
    messages = outcome.messages if outcome.error is None else outcome.complete
    return (
        outcome.error is None,
        outcome.tunnel,
        outcome.eof if outcome.error is None else None,
        [
            (m.method, m.target, m.status, m.reason, m.headers, m.body, m.trailers, m.complete)
            for m in messages
        ],
    )


@pytest.mark.parametrize("case", SCANNED, ids=[c.id for c in SCANNED])
def test_llhttp_case_split_anywhere(fastpath: ModuleType, case: Case) -> None:
    """The outcome does not depend on how the bytes arrive: split in two at
    every offset, and one byte at a time."""
    data, whole = _outcome_of(case, fastpath)
    expected = _summary(whole)
    for cut in range(1, len(data)):
        split = replay(fastpath, case.kind, [data[:cut], data[cut:]])
        assert _summary(split) == expected, f"split at {cut}"
    trickle = replay(fastpath, case.kind, [data[i : i + 1] for i in range(len(data))])
    assert _summary(trickle) == expected
