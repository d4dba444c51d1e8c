"""``make demo``: two versions of a service behind one sidecar, a 90/10 split under load.

A showcase run by ``python -m meshproxy.demo``; nothing in the sidecar imports it.
"""
