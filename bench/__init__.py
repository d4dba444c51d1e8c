"""Benchmarks of meshproxy, run side by side with their references (BENCHMARKS.md).

``python -m bench`` measures the proxy against nginx, HAProxy and a naive aiohttp
proxy; the other modules run alone, e.g. ``python -m bench.parser`` (the HTTP/1.1
head parsers) or ``python -m bench.scheduler``.  Nothing in this package is
imported by ``meshproxy`` itself.
"""
