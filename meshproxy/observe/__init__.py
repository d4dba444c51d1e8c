"""Observability of the sidecar: metrics (``metrics``, ``series``), the access log
(``accesslog``), tracing (``propagation``, ``tracing``; ``spanship`` exports spans from
a child process), and ``observer.MeshObserver``
which the data path calls once per exchange (``exchange``).

Modules here watch the data path and never change it: recording must not fail a
request, block the event loop, or let request data mint unbounded label values.
"""
