"""Fixtures of the control-plane unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.consul_double import ConsulDouble


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A Consul HTTP API double on a loopback port, stopped after the test."""
    d = ConsulDouble()
    await d.start()
    yield d
    await d.stop()
