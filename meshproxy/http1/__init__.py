"""The HTTP/1.1 proxy: downstream protocol, upstream connections and their pool.

``HttpServer`` is the protocol factory's product for an HTTP listener; it
shares a ``ListenerContext`` with every connection of that listener.
"""

from meshproxy.http1.context import ListenerContext, MetricsSink, NullMetrics
from meshproxy.http1.server import HttpServer

__all__ = ["HttpServer", "ListenerContext", "MetricsSink", "NullMetrics"]
