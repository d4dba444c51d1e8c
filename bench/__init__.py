"""Benchmarks of meshproxy, run side by side with their references (BENCHMARKS.md).

``python -m bench`` measures the proxy against nginx, HAProxy and a naive aiohttp
proxy; ``python -m bench.parser`` measures the HTTP/1.1 head parsers.  Nothing in
this package is imported by ``meshproxy`` itself.
"""
