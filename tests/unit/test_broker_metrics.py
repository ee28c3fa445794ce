"""The broker's `metrics` control call (broker/model_stats.py) with explicit clocks: queue
depth, in-flight requests, worker counts, refusals, expirations, restarts, load failures,
requests, batch sizes and queue times, as broker/core.py counts them."""

from __future__ import annotations

import logging

from tests.support.broker_core import (
    CLIENT,
    MS,
    WORKER,
    add,
    errors,
    flat,
    ready,
    reply_batch,
    request,
    take_back,
    take_control,
    take_front,
)
from zerobatch import protocol as p
from zerobatch.broker.core import READ_ONLY_CONTROL_OPS
from zerobatch.broker.model_stats import QUEUE_BUCKETS_NS

OTHER = b"echo@1.0#1.1"


def figures(core, index: int = 0) -> dict:
    return core.metrics()["models"][index]


def batches_for(core, identity: bytes = WORKER) -> list[list]:
    return [message for message in take_back(core) if message[0] == identity]


def waits(*wait_ns: int) -> list[int]:
    """The queue_counts of these queue times: one per bucket, `le` inclusive, +Inf last."""
    counts = [0] * (len(QUEUE_BUCKETS_NS) + 1)
    for wait in wait_ns:
        counts[next((i for i, bound in enumerate(QUEUE_BUCKETS_NS) if wait <= bound),
                    len(QUEUE_BUCKETS_NS))] += 1
    return counts


def test_queue_times_from_arrival_to_dispatch_fill_fixed_buckets(core):
    add(core)  # batch 4, a partial batch waits 50 ms (full_delay)
    ready(core, 0)
    request(core, b"a", 0)
    request(core, b"b", 30 * MS)
    model = figures(core)
    assert (model["queued"], model["in_flight"], model["requests"]) == (2, 0, 2)
    assert model["queue_counts"] == waits() and model["queue_ns_total"] == 0
    core.on_tick(50 * MS)  # both go: a waited 50 ms (a bucket's bound: in it), b 20 ms
    (batch,) = batches_for(core)
    model = figures(core)
    assert (model["queued"], model["in_flight"]) == (0, 2)
    assert model["queue_counts"] == waits(50 * MS, 20 * MS)
    assert model["queue_counts"][QUEUE_BUCKETS_NS.index(50 * MS)] == 1
    assert model["queue_ns_total"] == 70 * MS
    assert core.metrics()["worker_thread_ns"] is None  # no batch answered yet
    reply_batch(core, batch, 80 * MS)
    model = figures(core)
    assert model["in_flight"] == 0 and model["batch_sizes"] == [[2, 1]]
    # the broker's own time on it (a clock of its own, not the loop's): some, far under 1 s
    assert 0 < core.metrics()["worker_thread_ns"] < 10**9


def test_a_wait_past_the_last_bound_counts_in_the_last_bucket(core):
    add(core, name="late", batch_size=1, response_timeout_s=600)
    request(core, b"c", 0, model="late")
    ready(core, 150_000 * MS, b"late@1.0#0.1", model="late")  # 150 s: past 120 s, +Inf
    model = figures(core)
    assert model["queue_counts"] == waits(150_000 * MS) and model["queue_counts"][-1] == 1
    assert model["queue_ns_total"] == 150_000 * MS


def test_in_flight_counts_the_batch_sent_ahead_too(core):
    add(core, batch_size=1)
    ready(core, 0)
    request(core, b"a", 0)
    request(core, b"b", 1 * MS)  # a full batch: it goes ahead to the busy worker
    assert len(batches_for(core)) == 2
    model = figures(core)
    assert (model["queued"], model["in_flight"]) == (0, 2)
    assert model["queue_counts"] == waits(0, 0)  # both dispatched on arrival


def test_refusals_expirations_and_requests_are_counted_by_reason(core):
    add(core, max_queue=4, admission="queue", workers=2, max_workers=3)
    for index in range(5):  # no worker yet: four wait, the fifth finds the queue full
        request(core, b"r%d" % index, 0, timeout_ms=10)
    core.on_tick(10 * MS)  # the four expire in the queue (504)
    assert sorted(code for _rid, code in errors(take_front(core))) == (
        ["deadline_exceeded"] * 4 + ["queue_full"])
    model = figures(core)
    assert model["refusals"] == {"queue_full": 1, "deadline_unreachable": 0}
    assert (model["expired"], model["requests"], model["queued"]) == (4, 4, 0)
    assert model["workers"] == {"live": 0, "desired": 2, "min": 2, "max": 3}
    assert model["queue_counts"] == waits()  # none reached a worker


def test_late_requests_are_refused_as_deadline_unreachable(core):
    add(core, batch_size=2, max_batch_delay_ms=0, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    request(core, b"warm-a", 0)
    request(core, b"warm-b", 0)
    for at_ms in (10, 20):  # two batches teach the estimate: 10 ms a batch
        (batch,) = batches_for(core)
        reply_batch(core, batch, at_ms * MS)
    request(core, b"a", 20 * MS)
    for name in (b"b", b"c", b"d", b"e"):
        request(core, name, 20 * MS, timeout_ms=30)
    assert [rid for rid, _code in errors(take_front(core))] == [b"d", b"e"]
    model = figures(core)
    assert model["refusals"] == {"queue_full": 0, "deadline_unreachable": 2}
    assert model["requests"] == 5 and model["expired"] == 0


def test_worker_losses_count_as_restarts_and_retirements_do_not(core):
    add(core, batch_size=1)
    ready(core, 0)
    ready(core, 0, OTHER)
    model = figures(core)
    assert model["workers"]["live"] == 2 and model["worker_restarts"] == 0
    request(core, b"a", 1 * MS)
    assert figures(core)["in_flight"] == 1
    core.worker_lost(WORKER.decode(), 5 * MS, "its process exited")
    core.worker_lost(WORKER.decode(), 6 * MS, "its process exited")  # reaped: known once
    model = figures(core)
    assert (model["worker_restarts"], model["in_flight"], model["workers"]["live"]) == (1, 0, 1)
    assert core.retire(OTHER.decode())
    assert figures(core)["workers"]["live"] == 0  # retiring: no longer live
    core.worker_lost(OTHER.decode(), 7 * MS, "it disconnected")
    assert figures(core)["worker_restarts"] == 1


def test_load_failures_count_each_failed_worker(core):
    add(core)
    core.on_back([WORKER] + p.encode_load_failed("echo", "1.0", WORKER.decode(), "boom"), 0)
    core.load_timed_out(core.find_model("echo", None).config, OTHER.decode())
    model = figures(core)
    assert model["load_failures"] == 2 and model["worker_restarts"] == 0


def test_every_model_version_is_reported_with_the_histogram_bounds(core):
    add(core)
    add(core, version="2.0")
    answer = core.metrics()
    assert answer["queue_buckets_ns"] == list(QUEUE_BUCKETS_NS)
    # the first version added is the default: what a request that names none gets
    assert [(m["model"], m["version"], m["default"]) for m in answer["models"]] == [
        ("echo", "1.0", True), ("echo", "2.0", False)]
    assert all(len(m["queue_counts"]) == len(QUEUE_BUCKETS_NS) + 1 for m in answer["models"])


def test_the_metrics_call_is_read_only_local_and_logged_at_debug(core, caplog):
    add(core)
    assert "metrics" in READ_ONLY_CONTROL_OPS
    with caplog.at_level(logging.DEBUG, logger="zerobatch.broker"):
        core.on_control([CLIENT] + p.encode_control(b"m1", "metrics"), 0)
    (reply,) = flat(take_control(core))
    assert p.unpack_header(reply[4]) == core.metrics()
    (record,) = [r for r in caplog.records if "control metrics accepted" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    # not public: an anonymous client on the client endpoint is refused
    core.on_front([CLIENT] + p.encode_control(b"m2", "metrics"), 0)
    assert errors(take_front(core)) == [(b"m2", "forbidden")]



def test_the_public_models_call_names_versions_defaults_and_readiness(core):
    add(core)
    add(core, version="2.0")
    ready(core, 0)  # echo 1.0's worker
    max_queue = core.models["echo"]["1.0"].config.max_queue
    assert core.model_list() == {"models": [
        {"modelName": "echo", "modelVersion": "1.0", "default": True, "ready": True,
         "maxQueue": max_queue},
        {"modelName": "echo", "modelVersion": "2.0", "default": False, "ready": False,
         "maxQueue": max_queue}]}
