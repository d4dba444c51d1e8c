"""Split hashing of ``_fastpath`` in pure Python (twin of ``_fastpath_split.pxi``).

``split_bucket(key) -> int`` in [0, 10000): 64-bit FNV-1a, then MurmurHash3's
64-bit finaliser, then the top 32 bits scaled by multiply and shift.  The
reasoning and the wire contract (every sidecar computes the same bucket for
the same key: never change a constant or a step) are in
``meshproxy.routing.split``, which uses this function.  No I/O, no clock.
"""

from __future__ import annotations

_BUCKETS = 10000
_MASK = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def split_bucket(key: bytes) -> int:
    """The bucket of ``key`` in [0, 10000): stable across processes and hosts."""
    h = _FNV_OFFSET
    for byte in key:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return ((h >> 32) * _BUCKETS) >> 32
