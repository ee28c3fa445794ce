"""Faults injected into a serving server under load from both clients at once.

Each test starts a real server (the `slow` model, 2 workers, 2 HTTP front ends), drives it
with tests.support.load (HTTP lanes and ZeroMQ `Client` lanes, each call bounded by its
timeout), breaks one process with a signal, and checks three things:

- nothing hangs: every lane finishes within its bound (`Load.stop` raises `LoadHung`
  otherwise) and every call returned within `timeout + grace + slack` (CALL_BOUND_S);
- the errors are the expected ones, and only the calls the fault touched get them: a
  worker's death is `WorkerLost` (503 over HTTP) for the requests it held, answered at once
  (SIGKILL) or once its 3 missed heartbeats declare it lost (SIGSTOP); a front end's death is
  a connection error for the HTTP calls it held, and nothing over ZeroMQ;
- recovery: the supervisor's replacement serves again within RECOVERY_S, polled, never slept.

Why these bounds: requests time out after TIMEOUT_MS (10 s), long enough that an answer at
once (a SIGKILLed worker's WorkerLost, within ANSWERED_AT_ONCE_S), after the liveness (a
SIGSTOPped worker, LIVENESS_S = 3 heartbeats of 1 s, broker/core.py, plus up to 3 s for the
broker's tick and a loaded machine) or after a front end's stall (at most FRONT_END_STOP_S)
is never confused with a timeout. A call may take its timeout plus the clients' 1 s grace,
the HTTP lanes' extra second and 3 s of slack before it counts as hung (CALL_BOUND_S). A
restart waits 0.1 s of backoff, then a fresh interpreter imports the worker or the front end
(under a second when the machine is idle); RECOVERY_S leaves room for a 2-core machine
shared with other test runs.

A worker stopped for SHORT_STOP_S (well inside the liveness) must be neither lost nor
replaced; the broker does not watch front ends, so a stopped one is never replaced, and the
other one takes every new connection (they share one listening socket).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.support.http_request import http_request
from tests.support.load import (
    CLIENT_GRACE_S,
    CONNECTION_ERRORS,
    HANG_SLACK_S,
    HTTP,
    HTTP_EXTRA_S,
    ZMQ,
    Load,
    errors,
    over_bound,
    served_by,
    summary,
)

pytestmark = pytest.mark.integration

MODEL = "slow"
#: each request holds its worker this long, so that a fault finds requests in flight
SLEEP_MS = 200
TIMEOUT_MS = 10_000
#: heartbeat interval x liveness (zerobatch.protocol, broker/core.py)
LIVENESS_S = 3.0
ANSWERED_AT_ONCE_S = 2.0
RECOVERY_S = 15.0
#: a short stall of a worker, well inside LIVENESS_S: it must not be declared lost
SHORT_STOP_S = 0.5
#: the longest a front end stays stopped: well inside the requests' timeout, so that the
#: calls it holds complete once it runs again
FRONT_END_STOP_S = 6.0


def serve(make_server):
    # --zerobatch-answers: HTTP names zerobatch's error types (WorkerLost, 503), as ZeroMQ does,
    # instead of TorchServe's words (500 "Worker died.")
    return make_server({MODEL: MODEL}, "--workers", "2", "--frontends", "2",
                       "--zerobatch-answers")


def load_on(server, *, http_lanes: int = 2, zmq_lanes: int = 2) -> Load:
    return Load(server, MODEL, {"sleep_ms": SLEEP_MS}, http_lanes=http_lanes,
                zmq_lanes=zmq_lanes, timeout_ms=TIMEOUT_MS, max_requests=1000,
                max_duration_s=45)


#: the longest one call may take: its timeout, the clients' grace, slack (Load.call_bound_s)
CALL_BOUND_S = TIMEOUT_MS / 1000 + CLIENT_GRACE_S + HTTP_EXTRA_S + HANG_SLACK_S


def busy_worker(server) -> dict:
    """A worker of MODEL running a batch, as the broker reports it."""
    return server.wait_for(
        lambda: next((w for w in server.workers(MODEL) if w["status"] == "BUSY"), None),
        timeout_s=10, what="a busy worker")


def replaced(server, old_pid: int) -> list[dict]:
    """Wait until MODEL has two workers again, none of them old_pid."""
    def check():
        workers = server.workers(MODEL)
        pids = [w["pid"] for w in workers]
        return workers if len(workers) == 2 and old_pid not in pids else None
    return server.wait_for(check, timeout_s=RECOVERY_S, what=f"a worker to replace {old_pid}")


def alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def answered_by(outcomes, via: str, after_s: float) -> set[str]:
    """The front ends (x-request-id prefixes) that answered calls started after after_s."""
    return {o.served_by for o in outcomes if o.via == via and o.ok and o.started_s > after_s}


def both_front_ends_answer(load: Load) -> None:
    """Wait until each of the two front ends has answered an HTTP call, and ZeroMQ serves."""
    load.wait_for_successes(1, via=ZMQ)
    load.wait_until(lambda outcomes: len(answered_by(outcomes, HTTP, 0.0)) >= 2,
                    timeout_s=RECOVERY_S, what="answers from both front ends")


def held_request(port: int) -> socket.socket:
    """A connection whose request a front end is reading: its head asks for 100-continue,
    and the 100 Continue (sent when the app awaits the body) says which process took it;
    the body is never sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_BOUND_S)
    sock.sendall(f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: 2\r\n"
                 "Expect: 100-continue\r\n\r\n".encode())
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 100"), head
    return sock


def connection_ends(sock: socket.socket) -> str:
    """How a connection whose server died ends: "closed" (EOF) or the error raised."""
    try:
        data = sock.recv(4096)
    except OSError as exc:
        return type(exc).__name__
    return "closed" if not data else f"data: {data[:60]!r}"


def probe_http(server) -> tuple[int, str]:
    """One request on a fresh connection, bounded: (status, the front end that answered)."""
    status, headers, _body = http_request(
        server.http_port, "POST", f"/predictions/{MODEL}", b'{"sleep_ms": 0}',
        {"Content-Type": "application/json"}, timeout_s=FRONT_END_STOP_S / 3)
    return status, served_by(headers)


def assert_bounded(load: Load, outcomes) -> None:
    assert load.call_bound_s == CALL_BOUND_S
    slow = over_bound(outcomes, CALL_BOUND_S)
    assert not slow, f"calls over {CALL_BOUND_S} s: {slow}"


# ---------------------------------------------------------------------- workers

def test_sigkill_busy_worker_fails_only_its_requests_and_is_replaced(make_server):
    server = serve(make_server)
    with load_on(server) as load:
        load.wait_for_successes(2)
        victim = busy_worker(server)
        killed_s = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        replaced(server, victim["pid"])
        recovered_s = time.monotonic()
        load.wait_for_successes(3, after_s=recovered_s, timeout_s=RECOVERY_S)
        outcomes = load.stop()
    assert_bounded(load, outcomes)
    failed = errors(outcomes)
    assert {o.error for o in failed} == {"WorkerLost"}, summary(outcomes)
    assert all(o.status == 503 for o in failed)
    # only what the dead worker held (a batch, and one sent ahead) and answered at once
    assert 1 <= len(failed) <= 2, summary(outcomes)
    assert all(o.started_s <= killed_s + 0.5 and o.ended_s - killed_s < ANSWERED_AT_ONCE_S
               for o in failed), failed
    # the surviving worker served on meanwhile
    assert any(o.ok and killed_s < o.ended_s < recovered_s for o in outcomes), summary(outcomes)


def test_sigstopped_worker_is_declared_lost_after_missed_heartbeats(make_server):
    server = serve(make_server)
    with load_on(server) as load:
        load.wait_for_successes(2)
        victim = busy_worker(server)
        stopped_s = time.monotonic()
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            # the broker declares it lost and the supervisor SIGKILLs it (even stopped)
            server.wait_for(lambda: not alive(victim["pid"]),
                            timeout_s=LIVENESS_S + 5, what="the stopped worker to be killed")
            replaced(server, victim["pid"])
        finally:
            resume(victim["pid"])
        load.wait_for_successes(3, after_s=time.monotonic(), timeout_s=RECOVERY_S)
        outcomes = load.stop()
    assert_bounded(load, outcomes)
    failed = errors(outcomes)
    assert {o.error for o in failed} == {"WorkerLost"}, summary(outcomes)
    assert all(o.status == 503 for o in failed)
    # answered once the heartbeats were missed: not at once, not at the request's timeout
    for outcome in failed:
        waited_s = outcome.ended_s - stopped_s
        assert LIVENESS_S - 1.5 < waited_s < LIVENESS_S + 3.0, (waited_s, outcome)


def test_short_sigstop_of_a_worker_delays_but_loses_nothing(make_server):
    server = serve(make_server)
    with load_on(server) as load:
        load.wait_for_successes(2)
        victim = busy_worker(server)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            time.sleep(SHORT_STOP_S)  # the fault's length, not a wait for readiness
        finally:
            resume(victim["pid"])
        resumed_s = time.monotonic()
        load.wait_for_successes(3, after_s=resumed_s)
        outcomes = load.stop()
    assert_bounded(load, outcomes)
    assert not errors(outcomes), summary(outcomes)
    # the stall was real (its batch waited it out) and not taken for a loss
    assert max(o.latency_s for o in outcomes) >= SHORT_STOP_S, summary(outcomes)
    assert victim["pid"] in [w["pid"] for w in server.workers(MODEL)]


# ---------------------------------------------------------------------- front ends

def test_sigkill_front_end_fails_only_its_connections_and_is_replaced(make_server):
    server = serve(make_server)
    target, peer = sorted(server.frontend_pids())
    with load_on(server, http_lanes=3, zmq_lanes=1) as load:
        both_front_ends_answer(load)
        # With its peer stopped, only the target can accept a connection: the request held
        # open here is the target's once it says 100 Continue.
        os.kill(peer, signal.SIGSTOP)
        try:
            held = held_request(server.http_port)
            killed_s = time.monotonic()
            os.kill(target, signal.SIGKILL)
        finally:
            resume(peer)
        with held:
            assert connection_ends(held) in CONNECTION_ERRORS | {"closed"}
        assert time.monotonic() - killed_s < ANSWERED_AT_ONCE_S
        newcomer = server.wait_for(lambda: server.frontend_pids() - {target, peer},
                                   timeout_s=RECOVERY_S, what="a restarted front end")
        assert server.frontend_pids() == newcomer | {peer}
        # The replacement serves: calls started after the kill can only be answered by the
        # peer and the newcomer, so two front ends answering them means the newcomer does.
        load.wait_until(lambda outcomes: len(answered_by(outcomes, HTTP, killed_s)) >= 2,
                        timeout_s=RECOVERY_S, what="answers from the peer and the newcomer")
        outcomes = load.stop()
    assert_bounded(load, outcomes)
    # the lanes' calls the target held (if any) failed as connections, promptly; the rest,
    # ZeroMQ's included, were served
    failed = errors(outcomes)
    assert {o.error for o in failed} <= CONNECTION_ERRORS, summary(outcomes)
    assert all(o.via == HTTP and o.started_s < killed_s for o in failed), failed
    assert all(o.ended_s - killed_s < ANSWERED_AT_ONCE_S for o in failed), failed


def test_sigstopped_front_end_stalls_only_its_calls(make_server):
    server = serve(make_server)
    frontends = server.frontend_pids()
    victim = min(frontends)
    with load_on(server, http_lanes=3, zmq_lanes=1) as load:
        both_front_ends_answer(load)
        os.kill(victim, signal.SIGSTOP)
        try:
            stopped_s = time.monotonic()
            # the other front end takes every new connection (the lanes' calls the victim
            # holds wait), and ZeroMQ serves on
            answers = [probe_http(server) for _ in range(3)]
            load.wait_for_successes(1, after_s=stopped_s, via=ZMQ, timeout_s=FRONT_END_STOP_S)
            assert time.monotonic() - stopped_s < FRONT_END_STOP_S
        finally:
            resume(victim)
        load.wait_for_successes(2, after_s=time.monotonic())
        outcomes = load.stop()
    assert [status for status, _front_end in answers] == [200] * 3
    assert len({front_end for _status, front_end in answers}) == 1
    assert_bounded(load, outcomes)
    # stopped for less than the requests' timeout: what it held completed after SIGCONT
    assert not errors(outcomes), summary(outcomes)
    # the broker does not watch front ends: the stopped one is neither lost nor replaced
    assert server.frontend_pids() == frontends
