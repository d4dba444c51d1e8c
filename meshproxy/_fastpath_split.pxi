# Split hashing and choice of ``_fastpath.pyx`` (included there; twins of
# ``_fastpath_split_py.split_bucket`` and ``split_route``, same constants, same
# steps: the bucket of a key is part of the wire contract, see
# ``meshproxy.routing.split``).
# Unsigned 64-bit arithmetic wraps, which is the ``& MASK`` of the twin.

from libc.stdint cimport uint64_t


def split_bucket(bytes key):
    """The bucket of ``key`` in [0, 10000): stable across processes and hosts."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef Py_ssize_t i
    cdef uint64_t h = 0xCBF29CE484222325ULL
    for i in range(n):
        h = (h ^ p[i]) * 0x100000001B3ULL
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return <int>(((h >> 32) * 10000ULL) >> 32)


cdef inline long _draw_bucket(double draw) except -1:
    cdef double scaled = draw * 10000.0
    if scaled >= 10000.0:
        return 9999
    if scaled >= 0.0:
        return <long>scaled
    if scaled != scaled:
        raise ValueError("split draw is not a number")
    return 0


cdef class SplitRoutes:
    """The routes of a weighted split and the choice among them (twin of
    ``_fastpath_split_py.SplitRoutes``)."""

    cdef readonly tuple routes
    cdef readonly tuple bounds
    cdef object _rand

    def __init__(self, tuple routes not None, tuple bounds not None, object rand):
        if len(routes) != len(bounds) or not bounds:
            raise ValueError("one bound per route, at least one route")
        self.routes = routes
        self.bounds = bounds
        self._rand = rand

    cdef object _route(self, long bucket):
        cdef tuple bounds = self.bounds
        cdef Py_ssize_t n = len(bounds)
        cdef Py_ssize_t i = 0
        # bisect_right: the first backend whose upper bound is above the bucket.
        while i < n and <long>bounds[i] <= bucket:
            i += 1
        if i >= n:
            raise IndexError("bucket past the last bound")
        return self.routes[i]

    def pick(self):
        """The route of a request without a split key: one random draw."""
        return self._route(_draw_bucket(self._rand()))

    def pick_key(self, bytes key not None):
        """The route of a request whose split key is ``key``."""
        return self._route(split_bucket(key))
