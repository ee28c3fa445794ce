"""The broker core's side of scaling: `scale` control calls and graceful retirement (a retired
worker gets no new batch, finishes what it was sent, then is handed to the supervisor)."""

from __future__ import annotations

import logging

import pytest

from tests.support.broker_core import (
    CLIENT,
    MS,
    add,
    errors,
    ready,
    reply_batch,
    request,
    rids,
    take_back,
    take_control,
    take_front,
)
from zerobatch import protocol as p

W1 = b"echo@1.0#0.1"
W2 = b"echo@1.0#1.1"


def control(core, rid: bytes, op: str, **args) -> list:
    core.on_control([CLIENT] + p.encode_control(rid, op, **args), 0)
    return take_control(core)


def test_scale_is_recorded_for_the_loop_and_sets_the_models_minimum(core):
    add(core)
    [reply] = control(core, b"s", "scale", model="echo", workers=3)
    assert p.unpack_header(reply[-1])["status"].startswith("Processing worker updates")
    assert [(m.key, n) for m, n in core.scale_requests] == [("echo/1.0", 3)]
    assert core.find_model("echo", None).config.workers == 3


@pytest.mark.parametrize("args, code", [
    ({"model": "nope", "workers": 1}, "model_not_found"),
    ({"model": "echo", "workers": -1}, "bad_request"),
    ({"model": "echo", "workers": 1000}, "bad_request"),
    ({"model": "echo", "workers": "2"}, "bad_request"),
    ({"workers": 2}, "protocol_error"),
    ({"model": "echo", "workers": 3, "max_workers": 2}, "bad_request"),
])
def test_bad_scale_calls_are_refused_and_change_nothing(core, args, code):
    add(core)
    out = control(core, b"s", "scale", **args)
    assert errors(out) == [(b"s", code)]
    assert core.scale_requests == []


def test_describe_shows_the_worker_counts_a_scale_asked_for(core):
    add(core)
    control(core, b"s", "scale", model="echo", workers=2, max_workers=4)
    [described] = core.describe()["models"]
    assert (described["minWorkers"], described["maxWorkers"], described["maxQueue"]) == (2, 4, 8)


def test_scale_is_not_open_to_anonymous_clients(core):
    add(core)
    core.on_front([CLIENT] + p.encode_control(b"s", "scale", model="echo", workers=2), 0)
    assert errors(take_front(core)) == [(b"s", "forbidden")]
    assert core.scale_requests == []


def test_an_idle_worker_is_retired_at_once_and_gets_no_batch(core):
    add(core, batch_size=1)
    ready(core, 0, W1)
    ready(core, 0, W2)
    assert core.retire(W2.decode())
    assert core.retired_worker_ids == [W2.decode()]
    request(core, b"r1", 0)
    request(core, b"r2", 0)
    sent_to = {message[0] for message in take_back(core)}
    assert sent_to == {W1}  # r2 waits for (or is sent ahead to) W1, never the retiring W2


def test_a_busy_worker_finishes_its_batches_before_it_is_retired(core, caplog):
    add(core, batch_size=1, batch_policy="adaptive")
    ready(core, 0, W1)
    request(core, b"r1", 0)
    [batch] = take_back(core)
    assert core.retire(W1.decode())
    assert core.retired_worker_ids == []  # r1 still runs
    reply_batch(core, batch, 1 * MS, W1)
    assert rids(take_front(core)) == [b"r1"]
    assert core.retired_worker_ids == [W1.decode()]
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        core.worker_lost(W1.decode(), 2 * MS, "its process exited")
    assert "worker echo@1.0#0.1 retired" in caplog.text
    assert core.lost_worker_ids == []  # nothing to kill: the supervisor stopped it


def test_retiring_an_unknown_worker_says_so(core):
    add(core)
    assert not core.retire("echo@1.0#7.1")
