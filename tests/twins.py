"""The Cython fast path for tests that compare it with its pure-Python twin."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def compiled_fastpath() -> ModuleType:
    """``meshproxy._fastpath``; a missing build fails under
    MESHPROXY_REQUIRE_EXTENSION=1 (``make test``) and skips the test otherwise."""
    try:
        return importlib.import_module("meshproxy._fastpath")
    except ImportError as exc:
        if os.environ.get("MESHPROXY_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"the Cython fast path is required but does not import: {exc}")
        pytest.skip(f"the Cython fast path is not built ({exc})")
