"""Fixtures shared by the whole suite (keep this file small)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture(params=["python", "cython"])
def fastpath(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """Each fast-path implementation in turn: the pure-Python twin and the
    Cython build.  A missing build fails under MESHPROXY_REQUIRE_EXTENSION=1
    (``make test``) and is skipped otherwise."""
    if request.param == "python":
        yield importlib.import_module("meshproxy._fastpath_py")
        return
    try:
        module = importlib.import_module("meshproxy._fastpath")
    except ImportError as exc:
        if os.environ.get("MESHPROXY_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"the Cython fast path is required but does not import: {exc}")
        pytest.skip(f"the Cython fast path is not built ({exc})")
    yield module
