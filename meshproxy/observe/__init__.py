"""Observability of the sidecar: metrics (``metrics``); access log and tracing to come.

Modules here watch the data path and never change it: recording must not fail a
request, block the event loop, or let request data mint unbounded label values.
"""
