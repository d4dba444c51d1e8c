"""The fast path, chosen once at import: the Cython module or its pure-Python twin.

Both modules export the same names (``_fastpath_py`` documents the API).  The
Cython build is used unless it is missing or the environment sets
``MESHPROXY_NO_EXTENSIONS=1``; ``IMPLEMENTATION`` says which one is in force.
Type checkers always see the Python twin, whose signatures the Cython module
mirrors.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING


def _choose() -> tuple[ModuleType, str]:
    if os.environ.get("MESHPROXY_NO_EXTENSIONS", "") not in ("", "0"):
        return importlib.import_module("meshproxy._fastpath_py"), "python"
    try:
        return importlib.import_module("meshproxy._fastpath"), "cython"
    except ImportError:
        return importlib.import_module("meshproxy._fastpath_py"), "python"


if TYPE_CHECKING:
    from meshproxy._fastpath_py import *  # noqa: F403
    from meshproxy._fastpath_py import __all__ as _names

    IMPLEMENTATION: str
else:
    _module, IMPLEMENTATION = _choose()
    _names = _module.__all__
    globals().update({name: getattr(_module, name) for name in _names})

__all__ = [*_names, "IMPLEMENTATION"]
