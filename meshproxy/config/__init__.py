"""Pydantic models of the bootstrap file and of a mesh snapshot, and their loader.

Shared by the sidecar and the control plane; nothing here does I/O except
``load`` reading the file it is given.
"""

from meshproxy.config.bootstrap import Bootstrap, Listener, Node, Timeouts
from meshproxy.config.load import ConfigError, load_bootstrap, parse_bootstrap
from meshproxy.config.snapshot import Snapshot

__all__ = [
    "Bootstrap",
    "ConfigError",
    "Listener",
    "Node",
    "Snapshot",
    "Timeouts",
    "load_bootstrap",
    "parse_bootstrap",
]
