"""The node agent, ``meshcontrol agent``: the embedded executor.

It lives in the control-plane package (not in the sidecar's ``meshproxy agent``)
because it speaks the control plane's agent API and starts sidecars as plain
child processes; the sidecar package must not depend on ``control/``.

``meshcontrol agent --control-plane URL --node ID --cpu 2000m --memory 2Gi --zone a``
registers the node, long-polls its assignments, and runs each assigned instance
as a local process with an allocated port (``PORT``) behind its own sidecar,
registered in the mesh registry so that other sidecars balance to it.  See
``runner.py`` for one instance's life, ``agent.py`` for the node's.
"""
