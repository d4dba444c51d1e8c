"""meshproxy: the sidecar proxy (data plane) of the mesh."""

__version__ = "0.1.0"
