# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: embedsignature=True
"""The batching core, compiled: the twin of broker/_aggregator_py.py, decision for decision.

broker/_aggregator_py.py is the specification (rules, orderings, domain, errors); this module
gives the same answers in C. The state layout is declared in _aggregator.pxd. The C core is a
set of functions over an AggregatorState that cannot fail; the `Aggregator` class is the glue
that checks arguments, raises typed errors and builds the returned lists. The ids that `poll`
and `drain` return are first popped into a C scratch array, then copied into a list of exact
size, so the heaps are never left half-updated by a failing allocation.

C arithmetic stays within int64: time stamps and max_batch_delay_ns are checked to lie in
0..MAX_TIME_NS (2**62 - 1), so a sum of two of them fits, and products that could overflow are
compared through a division of non-negative values (where C and Python division agree).
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLong, PyLong_FromLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t

from _aggregator cimport (
    BY_ARRIVAL,
    BY_DEADLINE,
    DISPATCH_ALL,
    DISPATCH_FULL,
    HOLD,
    AggregatorState,
    Decision,
    Heap,
    Slot,
    slot_t,
)

cdef int64_t _MAX_TIME_NS = (1 << 62) - 1
cdef Py_ssize_t _MAX_QUEUE_LIMIT = 1 << 24

#: Largest time stamp (and max_batch_delay_ns) the aggregator accepts, in nanoseconds.
MAX_TIME_NS = _MAX_TIME_NS
#: Largest max_queue: the tables are allocated for max_queue requests up front.
MAX_QUEUE_LIMIT = _MAX_QUEUE_LIMIT


# ---------------------------------------------------------------------- errors

cdef int _raise_value_error(str message) except -1:
    """The one place where a failed C-level check becomes a typed Python error."""
    raise ValueError(message)


cdef inline int64_t _int64(object value) except? -1:
    """An int64 argument: TypeError unless it has __index__ (floats do not), OverflowError
    when it does not fit. Cython's own int64_t arguments would truncate floats instead."""
    return PyLong_AsLongLong(value)


cdef inline int _check_time(str name, int64_t value_ns) except -1:
    if value_ns < 0 or value_ns > _MAX_TIME_NS:
        _raise_value_error(f"{name} must be within 0..{_MAX_TIME_NS}, got {value_ns}")
    return 0


# ---------------------------------------------------------------------- indexed binary heaps

cdef inline bint _before(const Slot* slots, slot_t a, slot_t b, int kind) noexcept nogil:
    """Slot a orders before slot b: by key, then by request id (push order)."""
    cdef int64_t key_a = slots[a].key[kind]
    cdef int64_t key_b = slots[b].key[kind]
    return key_a < key_b or (key_a == key_b and slots[a].request_id < slots[b].request_id)


cdef inline void _sift_up(Heap* heap, Slot* slots, Py_ssize_t i, int kind) noexcept nogil:
    cdef slot_t moving = heap.items[i]
    cdef slot_t parent
    cdef Py_ssize_t parent_pos
    while i > 0:
        parent_pos = (i - 1) >> 1
        parent = heap.items[parent_pos]
        if not _before(slots, moving, parent, kind):
            break
        heap.items[i] = parent
        slots[parent].pos[kind] = <slot_t>i
        i = parent_pos
    heap.items[i] = moving
    slots[moving].pos[kind] = <slot_t>i


cdef inline void _sift_down(Heap* heap, Slot* slots, Py_ssize_t i, int kind) noexcept nogil:
    cdef slot_t moving = heap.items[i]
    cdef slot_t child
    cdef Py_ssize_t child_pos
    cdef Py_ssize_t size = heap.size
    while True:
        child_pos = 2 * i + 1
        if child_pos >= size:
            break
        if child_pos + 1 < size and _before(slots, heap.items[child_pos + 1],
                                            heap.items[child_pos], kind):
            child_pos += 1
        child = heap.items[child_pos]
        if not _before(slots, child, moving, kind):
            break
        heap.items[i] = child
        slots[child].pos[kind] = <slot_t>i
        i = child_pos
    heap.items[i] = moving
    slots[moving].pos[kind] = <slot_t>i


cdef inline void _heap_push(Heap* heap, Slot* slots, slot_t slot, int kind) noexcept nogil:
    heap.items[heap.size] = slot
    heap.size += 1
    _sift_up(heap, slots, heap.size - 1, kind)


cdef inline void _heap_remove(Heap* heap, Slot* slots, Py_ssize_t i,
                              int kind) noexcept nogil:
    """Remove the slot at heap position i; the last item fills the hole and moves into place."""
    cdef slot_t last
    heap.size -= 1
    if i == heap.size:
        return
    last = heap.items[heap.size]
    heap.items[i] = last
    slots[last].pos[kind] = <slot_t>i
    if i > 0 and _before(slots, last, heap.items[(i - 1) >> 1], kind):
        _sift_up(heap, slots, i, kind)
    else:
        _sift_down(heap, slots, i, kind)


# ---------------------------------------------------------------------- the C core

cdef inline int64_t _earliest_ns(const AggregatorState* st) noexcept nogil:
    """Smallest deadline among the waiting (count > 0)."""
    return st.slots[st.heaps[BY_DEADLINE].items[0]].key[BY_DEADLINE]


cdef inline int64_t _oldest_ns(const AggregatorState* st) noexcept nogil:
    """Earliest push time among the waiting (count > 0)."""
    return st.slots[st.heaps[BY_ARRIVAL].items[0]].key[BY_ARRIVAL]


cdef inline void _insert(AggregatorState* st, int64_t request_id, int64_t enqueue_ns,
                         int64_t deadline_ns) noexcept nogil:
    """Store an accepted request (count < max_queue)."""
    cdef slot_t slot
    st.free_count -= 1
    slot = st.free_slots[st.free_count]
    st.slots[slot].request_id = request_id
    st.slots[slot].key[BY_DEADLINE] = deadline_ns
    st.slots[slot].key[BY_ARRIVAL] = enqueue_ns
    _heap_push(&st.heaps[BY_DEADLINE], st.slots, slot, BY_DEADLINE)
    _heap_push(&st.heaps[BY_ARRIVAL], st.slots, slot, BY_ARRIVAL)
    st.count += 1


cdef inline void _pop_earliest_into(AggregatorState* st, Py_ssize_t i) noexcept nogil:
    """Remove the earliest-deadline request from both heaps; its id goes to out_ids[i]."""
    cdef slot_t slot = st.heaps[BY_DEADLINE].items[0]
    st.out_ids[i] = st.slots[slot].request_id
    _heap_remove(&st.heaps[BY_DEADLINE], st.slots, 0, BY_DEADLINE)
    _heap_remove(&st.heaps[BY_ARRIVAL], st.slots, st.slots[slot].pos[BY_ARRIVAL], BY_ARRIVAL)
    st.free_slots[st.free_count] = slot
    st.free_count += 1
    st.count -= 1


cdef inline Py_ssize_t _pop_expired(AggregatorState* st, int64_t now_ns) noexcept nogil:
    """Move the ids of the requests with deadline_ns <= now_ns to out_ids; return how many."""
    cdef Py_ssize_t k = 0
    while st.count > 0 and _earliest_ns(st) <= now_ns:
        _pop_earliest_into(st, k)
        k += 1
    return k


cdef inline Py_ssize_t _pop_earliest(AggregatorState* st, Py_ssize_t k) noexcept nogil:
    """Move the ids of the k (<= count) earliest-deadline requests to out_ids; return k."""
    cdef Py_ssize_t i
    cdef slot_t slot
    if k < st.count:
        for i in range(k):
            _pop_earliest_into(st, i)
        return k
    for i in range(k):  # everything goes: the arrival heap is simply emptied
        slot = st.heaps[BY_DEADLINE].items[0]
        st.out_ids[i] = st.slots[slot].request_id
        _heap_remove(&st.heaps[BY_DEADLINE], st.slots, 0, BY_DEADLINE)
        st.free_slots[st.free_count] = slot
        st.free_count += 1
    st.heaps[BY_ARRIVAL].size = 0
    st.count = 0
    return k


cdef inline int64_t _expected_run_ns(const AggregatorState* st, Py_ssize_t n) noexcept nogil:
    cdef slot_t source = st.run_source[n if n < st.batch_size else st.batch_size]
    return st.run_ns[source] if source else 0


cdef void _rebuild_run_source(AggregatorState* st) noexcept nogil:
    """run_source[m] = m where m is known, else the nearest known larger size, else the
    nearest known smaller size, else 0. Runs once per size, when it is first observed."""
    cdef Py_ssize_t size
    cdef slot_t larger = 0
    cdef slot_t smaller = 0
    for size in range(st.batch_size, 0, -1):
        if st.run_source[size] == size:
            larger = <slot_t>size
        else:
            st.run_source[size] = larger
    for size in range(1, st.batch_size + 1):
        if st.run_source[size] == size:
            smaller = <slot_t>size
        elif st.run_source[size] == 0:
            st.run_source[size] = smaller


cdef inline void _observe(AggregatorState* st, Py_ssize_t batch_len,
                          int64_t run_ns) noexcept nogil:
    """Fold a measured run time (>= 0) of a batch of 1..batch_size into its estimate."""
    if st.run_source[batch_len] == batch_len:
        # (7 * est + run) >> 3 == est + ((run - est) >> 3), which cannot overflow
        st.run_ns[batch_len] += (run_ns - st.run_ns[batch_len]) >> 3
    else:
        st.run_ns[batch_len] = run_ns
        st.run_source[batch_len] = <slot_t>batch_len
        _rebuild_run_source(st)


cdef inline Decision _decide(const AggregatorState* st, int64_t now_ns) noexcept nogil:
    """The dispatch rules, for count > 0 waiting requests, none of them expired."""
    cdef Py_ssize_t n = st.count
    if n >= st.batch_size:  # rule 1
        return DISPATCH_FULL
    if now_ns - _oldest_ns(st) >= st.max_batch_delay_ns:  # rule 2
        return DISPATCH_ALL
    if _earliest_ns(st) - now_ns <= _expected_run_ns(st, n):  # rule 3
        return DISPATCH_ALL
    if st.adaptive:  # rule 4: a free worker takes what waits
        return DISPATCH_ALL
    return HOLD


cdef inline int64_t _next_wakeup_ns(const AggregatorState* st, int64_t now_ns,
                                    bint worker_free) noexcept nogil:
    """min(expiry and, with a free worker, the rule 1-4 trigger times), at least now_ns."""
    cdef Py_ssize_t n = st.count
    cdef int64_t earliest_ns, wakeup_ns, delay_end_ns, run_ns
    if n == 0:
        return -1
    earliest_ns = _earliest_ns(st)
    if earliest_ns <= now_ns:  # expiry
        return now_ns
    wakeup_ns = earliest_ns
    if not worker_free:
        return wakeup_ns
    if n >= st.batch_size or st.adaptive:  # rule 1 or rule 4
        return now_ns
    delay_end_ns = _oldest_ns(st) + st.max_batch_delay_ns
    if delay_end_ns <= now_ns:  # rule 2
        return now_ns
    if delay_end_ns < wakeup_ns:
        wakeup_ns = delay_end_ns
    run_ns = _expected_run_ns(st, n)
    if run_ns >= earliest_ns - now_ns:  # rule 3
        return now_ns
    if earliest_ns - run_ns < wakeup_ns:
        wakeup_ns = earliest_ns - run_ns
    return wakeup_ns


cdef inline list _id_list(const int64_t* request_ids, Py_ssize_t k):
    """A new list of k Python ints."""
    cdef list out = PyList_New(k)
    cdef Py_ssize_t i
    cdef object item
    for i in range(k):
        item = PyLong_FromLongLong(request_ids[i])
        Py_INCREF(item)  # PyList_SET_ITEM steals a reference
        PyList_SET_ITEM(out, i, item)
    return out


# ---------------------------------------------------------------------- the Python glue

cdef class Aggregator:
    """Waiting request ids of one model version, and the rules that batch them."""

    cdef AggregatorState state

    def __cinit__(self, batch_size, max_batch_delay_ns, max_queue, bint adaptive=True):
        cdef AggregatorState* st = &self.state
        cdef int64_t size = _int64(batch_size)
        cdef int64_t delay_ns = _int64(max_batch_delay_ns)
        cdef int64_t room = _int64(max_queue)
        cdef Py_ssize_t i
        if size < 1:
            _raise_value_error(f"batch_size must be >= 1, got {size}")
        if delay_ns < 0 or delay_ns > _MAX_TIME_NS:
            _raise_value_error(f"max_batch_delay_ns must be within 0..{_MAX_TIME_NS}, "
                               f"got {delay_ns}")
        if room < size:
            _raise_value_error(f"max_queue ({room}) must be at least batch_size "
                               f"({size}); raise max_queue")
        if room > _MAX_QUEUE_LIMIT:
            _raise_value_error(f"max_queue ({room}) must be at most {_MAX_QUEUE_LIMIT}; "
                               "lower max_queue")
        # Cython zero-fills the object, so every pointer is NULL until allocated here, and
        # __dealloc__ may free them all even when this fails half-way.
        st.batch_size = <Py_ssize_t>size
        st.max_batch_delay_ns = delay_ns
        st.max_queue = <Py_ssize_t>room
        st.adaptive = adaptive
        st.slots = <Slot*>PyMem_Malloc(st.max_queue * sizeof(Slot))
        st.free_slots = <slot_t*>PyMem_Malloc(st.max_queue * sizeof(slot_t))
        st.heaps[BY_DEADLINE].items = <slot_t*>PyMem_Malloc(st.max_queue * sizeof(slot_t))
        st.heaps[BY_ARRIVAL].items = <slot_t*>PyMem_Malloc(st.max_queue * sizeof(slot_t))
        st.out_ids = <int64_t*>PyMem_Malloc(st.max_queue * sizeof(int64_t))
        st.run_ns = <int64_t*>PyMem_Malloc((st.batch_size + 1) * sizeof(int64_t))
        st.run_source = <slot_t*>PyMem_Malloc((st.batch_size + 1) * sizeof(slot_t))
        if (st.slots == NULL or st.free_slots == NULL or st.out_ids == NULL
                or st.heaps[BY_DEADLINE].items == NULL or st.heaps[BY_ARRIVAL].items == NULL
                or st.run_ns == NULL or st.run_source == NULL):
            raise MemoryError(f"cannot allocate an aggregator for max_queue={room}")
        for i in range(st.max_queue):  # slot 0 is handed out first
            st.free_slots[i] = <slot_t>(st.max_queue - 1 - i)
        st.free_count = st.max_queue
        st.heaps[BY_DEADLINE].size = 0
        st.heaps[BY_ARRIVAL].size = 0
        st.count = 0
        st.has_last_id = False
        st.last_id = 0
        for i in range(st.batch_size + 1):
            st.run_ns[i] = 0
            st.run_source[i] = 0

    def __dealloc__(self):
        PyMem_Free(self.state.slots)
        PyMem_Free(self.state.free_slots)
        PyMem_Free(self.state.heaps[BY_DEADLINE].items)
        PyMem_Free(self.state.heaps[BY_ARRIVAL].items)
        PyMem_Free(self.state.out_ids)
        PyMem_Free(self.state.run_ns)
        PyMem_Free(self.state.run_source)

    # ------------------------------------------------------------------ read-only settings

    @property
    def batch_size(self):
        return self.state.batch_size

    @property
    def max_batch_delay_ns(self):
        return self.state.max_batch_delay_ns

    @property
    def max_queue(self):
        return self.state.max_queue

    @property
    def adaptive(self):
        return True if self.state.adaptive else False

    def __len__(self):
        return self.state.count

    def __repr__(self):
        return (f"Aggregator(batch_size={self.batch_size}, "
                f"max_batch_delay_ns={self.max_batch_delay_ns}, max_queue={self.max_queue}, "
                f"adaptive={self.adaptive}, waiting={len(self)})")

    # ------------------------------------------------------------------ arrivals

    def push(self, request_id, now_ns, deadline_ns):
        """Queue a request; False (nothing stored) when max_queue requests already wait.

        request_id must exceed the id of every earlier push, refused ones included."""
        cdef AggregatorState* st = &self.state
        cdef int64_t id_ = _int64(request_id)
        cdef int64_t now = _int64(now_ns)
        cdef int64_t deadline = _int64(deadline_ns)
        _check_time("now_ns", now)
        _check_time("deadline_ns", deadline)
        if st.has_last_id and id_ <= st.last_id:
            _raise_value_error(f"request_id {id_} must be greater than the last pushed "
                               f"id {st.last_id}")
        st.has_last_id = True
        st.last_id = id_
        if st.count == st.max_queue:
            return False
        _insert(st, id_, now, deadline)
        return True

    # ------------------------------------------------------------------ decisions

    def poll(self, now_ns, bint worker_free):
        """Remove and return (expired, batch); batch is [] unless a worker is free and a rule
        says go. Both lists are ordered by (deadline_ns, push order)."""
        cdef AggregatorState* st = &self.state
        cdef int64_t now = _int64(now_ns)
        cdef Py_ssize_t k
        cdef list expired
        cdef Decision decision = HOLD
        _check_time("now_ns", now)
        expired = _id_list(st.out_ids, _pop_expired(st, now))
        if worker_free and st.count > 0:
            decision = _decide(st, now)
        if decision == DISPATCH_FULL:
            k = _pop_earliest(st, st.batch_size)
        elif decision == DISPATCH_ALL:
            k = _pop_earliest(st, st.count)
        else:
            k = 0
        return expired, _id_list(st.out_ids, k)

    def next_wakeup_ns(self, now_ns, bint worker_free):
        """The earliest time at which `poll` could answer differently, -1 when nothing waits.
        Never less than now_ns: now_ns itself means "poll now"."""
        cdef int64_t now = _int64(now_ns)
        _check_time("now_ns", now)
        return _next_wakeup_ns(&self.state, now, worker_free)

    # ------------------------------------------------------------------ run-time estimates

    def observe(self, batch_len, run_ns):
        """Record that a batch of batch_len requests took run_ns from dispatch to reply."""
        cdef int64_t size = _int64(batch_len)
        cdef int64_t run = _int64(run_ns)
        if run < 0:
            run = 0
        if size < 1 or size > self.state.batch_size:
            _raise_value_error(f"batch_len must be within 1..{self.state.batch_size}, "
                               f"got {size}")
        _observe(&self.state, <Py_ssize_t>size, run)

    def expected_run_ns(self, n):
        """Estimated run time of a batch of min(n, batch_size) requests: its own estimate, else
        the nearest known larger size, else the nearest known smaller size, else 0."""
        cdef int64_t size = _int64(n)
        if size < 1:
            _raise_value_error(f"n must be >= 1, got {size}")
        if size > self.state.batch_size:
            size = self.state.batch_size
        return _expected_run_ns(&self.state, <Py_ssize_t>size)

    # ------------------------------------------------------------------ shutdown

    def drain(self):
        """Remove and return every waiting request id, ordered by (deadline_ns, push order)."""
        return _id_list(self.state.out_ids, _pop_earliest(&self.state, self.state.count))
