"""The policy room: the filter chain and its built-in filters (rate limits, authz, JWT).

``compile_chain`` builds a ``FilterChain`` from a snapshot; the data path runs
``chain.on_request(ctx)`` / ``chain.on_response(ctx)`` (contract in ``chain``).
"""

from meshproxy.policy.build import compile_chain
from meshproxy.policy.chain import STOP, ChainEntry, FilterChain, Pending, RequestContext
from meshproxy.policy.counters import Counters
from meshproxy.policy.reply import LocalReply

__all__ = [
    "STOP",
    "ChainEntry",
    "Counters",
    "FilterChain",
    "LocalReply",
    "Pending",
    "RequestContext",
    "compile_chain",
]
