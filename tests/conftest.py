"""Fixtures shared by the whole suite (keep this file small)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.twins import compiled_fastpath


@pytest.fixture(params=["python", "cython"])
def fastpath(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """Each fast-path implementation in turn: the pure-Python twin and the
    Cython build.  A missing build fails under MESHPROXY_REQUIRE_EXTENSION=1
    (``make test``) and is skipped otherwise."""
    if request.param == "python":
        yield importlib.import_module("meshproxy._fastpath_py")
        return
    module = compiled_fastpath()
    yield module
