# Per-request counting for the metrics, of ``_fastpath.pyx`` (included there;
# twin of ``_fastpath_tally_py``, whose docstring is the reference): the
# histograms are C arrays, the bucket found by a C loop.

DEF _MAX_BOUNDS = 32
MAX_BOUNDS = _MAX_BOUNDS


cdef class ShapeTally:
    """Running duration and size histograms of one shape (see the twin)."""

    cdef double _duration_bounds[_MAX_BOUNDS]
    cdef double _bytes_bounds[_MAX_BOUNDS]
    cdef Py_ssize_t _n_duration, _n_bytes
    cdef long long _duration[_MAX_BOUNDS + 1]
    cdef long long _request[_MAX_BOUNDS + 1]
    cdef long long _response[_MAX_BOUNDS + 1]
    cdef public double duration_sum, request_sum, response_sum

    def __init__(self, tuple duration_bounds, tuple bytes_bounds):
        self._n_duration = _set_bounds(self._duration_bounds, duration_bounds)
        self._n_bytes = _set_bounds(self._bytes_bounds, bytes_bounds)
        memset(self._duration, 0, sizeof(self._duration))
        memset(self._request, 0, sizeof(self._request))
        memset(self._response, 0, sizeof(self._response))
        self.duration_sum = 0.0
        self.request_sum = 0.0
        self.response_sum = 0.0

    def duration_buckets(self):
        return [self._duration[i] for i in range(self._n_duration + 1)]

    def request_buckets(self):
        return [self._request[i] for i in range(self._n_bytes + 1)]

    def response_buckets(self):
        return [self._response[i] for i in range(self._n_bytes + 1)]

    cdef inline void _add_duration(self, double duration):
        self.duration_sum += duration
        self._duration[_bucket(self._duration_bounds, self._n_duration, duration)] += 1

    cdef inline void _add(self, double duration, double bytes_in, double bytes_out):
        self._add_duration(duration)
        self.request_sum += bytes_in
        self._request[_bucket(self._bytes_bounds, self._n_bytes, bytes_in)] += 1
        self.response_sum += bytes_out
        self._response[_bucket(self._bytes_bounds, self._n_bytes, bytes_out)] += 1

    def add_duration(self, double duration):
        self._add_duration(duration)

    def add(self, double duration, double bytes_in, double bytes_out):
        self._add(duration, bytes_in, bytes_out)


cdef Py_ssize_t _set_bounds(double* out, tuple values) except -1:
    cdef Py_ssize_t n = len(values)
    cdef Py_ssize_t i
    if n > _MAX_BOUNDS:
        raise ValueError(f"at most {_MAX_BOUNDS} bucket bounds, got {n}")
    for i in range(n):
        out[i] = float(values[i])
        if i and out[i] <= out[i - 1]:
            raise ValueError("bucket bounds must be ascending")
    return n


cdef inline Py_ssize_t _bucket(const double* bounds, Py_ssize_t n, double value):
    # bisect_left: the first bound >= value, else n (the +Inf bucket).
    cdef Py_ssize_t i = 0
    while i < n and bounds[i] < value:
        i += 1
    return i


cdef class ExchangeTally:
    """``count`` of one requests series and the shape it feeds (see the twin)."""

    cdef public long long count
    cdef readonly ShapeTally shape

    def __init__(self, ShapeTally shape):
        self.shape = shape
        self.count = 0

    def add(self, double duration, double bytes_in, double bytes_out):
        self.count += 1
        self.shape._add(duration, bytes_in, bytes_out)

    def add_duration(self, double duration):
        self.count += 1
        self.shape._add_duration(duration)


cdef class ExchangeCounter:
    """The metrics' ``exchange_done`` (see the twin)."""

    cdef dict _table
    cdef object _miss
    cdef Py_ssize_t _max

    def __init__(self, miss, Py_ssize_t max_keys):
        self._miss = miss
        self._max = max_keys
        self._table = {}

    def clear(self):
        self._table = {}

    def size(self):
        return len(self._table)

    cpdef ExchangeTally tally_for(self, tuple raw):
        cdef object found = self._table.get(raw)
        if found is None:
            found = <ExchangeTally?>self._miss(raw)
            if len(self._table) >= self._max:
                self._table = {}
            self._table[raw] = found
        return <ExchangeTally>found

    def __call__(self, ex):
        cdef tuple raw = (
            ex.direction,
            ex.source_service,
            ex.destination_service,
            ex.destination_subset,
            ex.route,
            ex.status,
            ex.flags,
        )
        cdef ExchangeTally tally = self.tally_for(raw)
        tally.count += 1
        tally.shape._add(ex.duration, ex.bytes_in, ex.bytes_out)
