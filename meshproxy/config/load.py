"""Read a bootstrap file: YAML -> validated ``Bootstrap``, or a ``ConfigError``
naming the file, the line and the field that failed.

The YAML is composed into a node tree first so that every validation error can
be traced back to the line it came from, and so that duplicate keys (which
PyYAML would silently collapse, losing one value) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from meshproxy.config.bootstrap import Bootstrap


class ConfigError(Exception):
    """A config refused.  ``problems`` lists ``(where, message)`` pairs, ``where``
    being ``file:line: dotted.field.path``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{where}: {message}" for where, message in problems))


def _node_at(root: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    node = root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == key), None)
            if child is None:
                return node
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if not 0 <= key < len(node.value):
                return node
            node = node.value[key]
        else:
            return node
    return node


def _duplicate_keys(node: yaml.Node | None, path: str, out: list[tuple[yaml.Node, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                out.append((key, f"{path}{name}"))
            seen.add(name)
            _duplicate_keys(value, f"{path}{name}.", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}{i}.", out)


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_bootstrap(text: str, source: str = "<config>") -> Bootstrap:
    """Validate bootstrap YAML text; ``source`` names it in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(f"{source}{line}", f"invalid YAML: {problem}")]) from None
    duplicates: list[tuple[yaml.Node, str]] = []
    _duplicate_keys(root, "", duplicates)
    if duplicates:
        raise ConfigError(
            [
                (f"{source}:{key.start_mark.line + 1}: {path}", "duplicate key")
                for key, path in duplicates
            ]
        )
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([(source, "the top level must be a mapping")])
    try:
        return Bootstrap.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = _node_at(root, loc)
            line = f":{node.start_mark.line + 1}" if node is not None else ""
            problems.append((f"{source}{line}: {_dotted(loc)}", err["msg"]))
        raise ConfigError(problems) from None


def load_bootstrap(path: str | Path) -> Bootstrap:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(str(path), f"cannot read: {exc}")]) from None
    return parse_bootstrap(text, str(path))
