"""Finding filter classes: built-ins by name, entry points, dotted paths.

A filter is a plain class.  What the chain uses of it, all optional:

* ``Config``: a pydantic model; the ``config`` mapping of its snapshot entry
  is validated against it and the instance passed to ``__init__``.  Without
  ``Config`` the class is built with no argument and ``config`` must be empty;
* ``on_request(ctx)`` / ``on_response(ctx)``: sync or ``async``; only the
  hooks a class defines are called (see ``chain``);
* ``stage = "authn"``: run before authz (identity filters); default after it;
* ``aclose()``: async, called when the chain is replaced.

Entry points: group ``meshproxy.filters``, ``name = "package.module:Class"``.
It must not build filters (``build``) or run them (``chain``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

ENTRY_POINT_GROUP = "meshproxy.filters"


class PluginError(Exception):
    """A filter class that cannot be found or loaded."""


def builtin_filters() -> dict[str, type]:
    from meshproxy.policy.authn import JwtFilter

    return {"jwt": JwtFilter}


def load_filter_class(name: str | None, path: str | None) -> type:
    if path is not None:
        return _load_path(path)
    assert name is not None
    builtin = builtin_filters().get(name)
    if builtin is not None:
        return builtin
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise PluginError(f"no filter named {name!r} (entry point group {ENTRY_POINT_GROUP})")
    if len({ep.value for ep in found}) > 1:
        raise PluginError(f"filter name {name!r} is claimed by several packages")
    try:
        cls = found[0].load()
    except Exception as exc:
        raise PluginError(f"cannot load filter {name!r}: {exc}") from None
    return _check_class(cls, name)


def _load_path(path: str) -> type:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"path must look like 'package.module:Class', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise PluginError(f"cannot load {path!r}: {exc}") from None
    return _check_class(obj, path)


def _check_class(obj: object, what: str) -> type:
    if not isinstance(obj, type):
        raise PluginError(f"{what} is not a class")
    if not (hasattr(obj, "on_request") or hasattr(obj, "on_response")):
        raise PluginError(f"{what} defines neither on_request nor on_response")
    config = getattr(obj, "Config", None)
    if config is not None and not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise PluginError(f"{what}.Config is not a pydantic model")
    return obj


def filter_config(cls: type, config: dict[str, Any]) -> BaseModel | None:
    """Validate ``config`` with the class's model (pydantic ValidationError on failure)."""
    model = getattr(cls, "Config", None)
    if model is None:
        if config:
            raise PluginError(f"{cls.__name__} takes no config")
        return None
    validated: BaseModel = model.model_validate(config)
    return validated
