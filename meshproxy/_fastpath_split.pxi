# Split hashing of ``_fastpath.pyx`` (included there; twin of
# ``_fastpath_split_py.split_bucket``, same constants, same steps: the bucket
# of a key is part of the wire contract, see ``meshproxy.routing.split``).
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
