# The state layout of the compiled aggregator (`broker._aggregator`), in one place.
#
# _aggregator.pyx cimports these declarations (types only: nothing here exists at run time)
# and its `cdef class Aggregator` holds one AggregatorState. The file is cimported rather than
# being the module's own .pxd because setup.py names the extension `broker._aggregator`, and
# Cython looks for a module's own .pxd under that full name (broker/_aggregator.pxd).
#
# Waiting requests live in a slot table of max_queue entries, allocated once. Two indexed
# binary heaps of slot indices order them: one by (deadline_ns, request_id), which gives
# expiry and earliest-deadline-first batches, one by (enqueue_ns, request_id), which gives
# `oldest` for the max_batch_delay rule. Request ids rise with push order, so the id is the
# push-order tie-breaker. Each slot remembers its position in both heaps, so a request leaving
# through one heap leaves the other in O(log n). Free slots form a stack.
# The behaviour is specified by broker/_aggregator_py.py; _aggregator.pyx must match it
# decision for decision.

from libc.stdint cimport int32_t, int64_t

ctypedef int32_t slot_t  # index into the slot table (max_queue <= 2**24)

cdef enum:  # heap kinds, used as indices (of heaps, of a slot's keys and positions)
    BY_DEADLINE = 0  # the heap ordered by (deadline_ns, request_id)
    BY_ARRIVAL = 1   # the heap ordered by (enqueue_ns, request_id)

cdef enum Decision:    # what `poll` does with the waiting requests
    HOLD = 0           # no batch
    DISPATCH_FULL = 1  # rule 1: the batch_size earliest deadlines
    DISPATCH_ALL = 2   # rules 2-4: everything waiting

cdef struct Slot:
    int64_t request_id  # also the tie-breaker of both heaps
    int64_t key[2]      # key[BY_DEADLINE] = deadline_ns, key[BY_ARRIVAL] = enqueue_ns
    slot_t pos[2]       # this slot's index in each heap

cdef struct Heap:
    slot_t* items       # slot indices: a binary min-heap by (key[kind], request_id)
    Py_ssize_t size

cdef struct AggregatorState:
    # settings, fixed at construction
    Py_ssize_t batch_size
    int64_t max_batch_delay_ns
    Py_ssize_t max_queue
    bint adaptive             # rule 4: a free worker takes whatever waits

    # the waiting requests
    Slot* slots               # [max_queue]
    slot_t* free_slots        # [max_queue], a stack of unused slot indices
    Py_ssize_t free_count
    Heap heaps[2]             # heaps[BY_DEADLINE], heaps[BY_ARRIVAL]: both hold every
    Py_ssize_t count          # waiting request, so both sizes equal count
    int64_t* out_ids          # [max_queue], scratch for the ids that poll and drain return

    # push order
    bint has_last_id          # a push passed validation (accepted or refused)
    int64_t last_id

    # rule 3's run-time estimates, fed by observe()
    int64_t* run_ns           # [batch_size + 1], estimate per batch size (index 0 unused)
    slot_t* run_source        # [batch_size + 1], the size whose estimate answers for each
                              # size (0: none known); rebuilt when a size is first observed
