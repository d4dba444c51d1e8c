"""A half-close on an L4 pair: passed on where the other side can carry it,
held (the pair kept open for the answer) where it cannot, as on TLS."""

from __future__ import annotations

import asyncio
from typing import cast

from meshproxy.tcp import _Side


class FakeTransport:
    """Just what ``_Side`` asks of a transport."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.eof_written = False
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return object() if name == "ssl_object" and self.tls else default

    def can_write_eof(self) -> bool:
        return not self.tls  # as the loops' TLS transports say

    def write_eof(self) -> None:
        assert not self.tls
        self.eof_written = True

    def close(self) -> None:
        self.closed = True


def _pair(receiver_tls: bool, other_tls: bool) -> tuple[_Side, FakeTransport]:
    receiver, other = _Side(None), _Side(None)
    receiver.connection_made(cast(asyncio.Transport, FakeTransport(receiver_tls)))
    other_transport = FakeTransport(other_tls)
    other.connection_made(cast(asyncio.Transport, other_transport))
    receiver.other, other.other = other, receiver
    return receiver, other_transport


def test_eof_is_passed_on_as_a_half_close_between_plain_connections() -> None:
    receiver, other = _pair(receiver_tls=False, other_tls=False)
    assert receiver.eof_received() is True  # kept open for the answer
    assert other.eof_written and not other.closed


def test_eof_towards_a_tls_connection_keeps_the_pair_open_for_the_answer() -> None:
    receiver, other = _pair(receiver_tls=False, other_tls=True)
    assert receiver.eof_received() is True
    assert not other.eof_written and not other.closed


def test_eof_from_a_tls_connection_is_passed_on_and_lets_it_close() -> None:
    receiver, other = _pair(receiver_tls=True, other_tls=False)
    # A TLS transport closes after EOF whatever it is told; saying so avoids its warning.
    assert receiver.eof_received() is False
    assert other.eof_written


def test_eof_after_the_other_way_ended_closes_the_pair() -> None:
    receiver, other = _pair(receiver_tls=False, other_tls=False)
    assert receiver.other is not None
    receiver.other.eof = True
    assert receiver.eof_received() is False
    assert not other.eof_written
