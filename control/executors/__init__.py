"""Executors: what turns the control plane's placement and scaling decisions into
running instances.  The embedded one is the node agent (``control/agent/``); on a
real cluster it is Kubernetes (``kubernetes.py``)."""
