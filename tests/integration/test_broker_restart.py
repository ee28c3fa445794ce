"""A broker that dies is not a total outage (finding 12 of the fault probe).

In the background, the keeper (broker/keeper.py) starts a new broker after a crash; its
workers and front ends died with the old one and the new one starts its own; the clients
reconnect by themselves. In the foreground, the exit status tells a supervisor what to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.load import Load, over_bound
from tests.support.servers import ROOT, TEST_MODELS, Server, free_port, isolated_flags
from zerobatch import run_dir
from zerobatch.api.client import Client
from zerobatch.launch import EXIT_ADDRESS_IN_USE

#: from the SIGKILL to a new broker answering over both clients: the keeper's first backoff
#: (0.5 s), the start of a broker, a worker and a front end, on a loaded 2-core machine
RECOVERY_BOUND_S = 30.0
#: the load's count bound: an echo answers thousands a second, so the load is bounded by its
#: duration, and its lanes still send after the fault
LOAD_MAX_REQUESTS = 200_000


def broker_of(server: Server) -> int:
    pid = run_dir.lock_holder(server.run_dir, run_dir.BROKER_LOCK)
    assert pid is not None, "no broker holds the lock"
    return pid


def test_a_killed_broker_is_restarted_and_both_clients_reconnect(make_server):
    server = make_server({"echo": "echo"}, "--workers", "2", "--frontends", "2")
    keeper = run_dir.lock_holder(server.run_dir, run_dir.KEEPER_LOCK)
    first = broker_of(server)
    with Client(server.client_address, timeout_ms=2000) as kept_client:
        assert kept_client.predict("echo", b"before").body == b"before"
        with Load(server, "echo", b"load", http_lanes=2, zmq_lanes=2, timeout_ms=2000,
                  max_requests=LOAD_MAX_REQUESTS, max_duration_s=RECOVERY_BOUND_S + 20) as load:
            load.wait_for_successes(20, timeout_s=20)
            os.kill(first, signal.SIGKILL)
            killed_s = time.monotonic()
            server.wait_for(lambda: (pid := run_dir.lock_holder(
                server.run_dir, run_dir.BROKER_LOCK)) and pid != first,
                timeout_s=RECOVERY_BOUND_S, what="a new broker")
            load.wait_for_successes(10, after_s=killed_s + 0.5, via="http",
                                    timeout_s=RECOVERY_BOUND_S)
            load.wait_for_successes(10, after_s=killed_s + 0.5, via="zmq",
                                    timeout_s=RECOVERY_BOUND_S)
        outcomes = load.stop()  # raises LoadHung if any call never returned
        # the client made before the crash reconnects by itself
        server.wait_for(lambda: _answers(kept_client), timeout_s=RECOVERY_BOUND_S,
                        what="the old client answered")
    assert not over_bound(outcomes, load.call_bound_s), "a call outlived its bound"
    assert run_dir.lock_holder(server.run_dir, run_dir.KEEPER_LOCK) == keeper
    assert broker_of(server) != first
    with open(os.path.join(server.run_dir, run_dir.LOG_FILE)) as log:
        assert f"the broker (pid {first}) was killed by SIGKILL; restarting it" in log.read()


def test_a_stopped_broker_hangs_no_call_and_serves_again_when_continued(make_server):
    """SIGSTOP for longer than the workers' liveness (3 heartbeats): every call in flight ends
    by its own deadline, the workers that gave the broker up are replaced once it runs
    again, and both clients are served again."""
    server = make_server({"echo": "echo"}, "--workers", "2", "--frontends", "2")
    broker = broker_of(server)
    with Load(server, "echo", b"load", http_lanes=2, zmq_lanes=2, timeout_ms=2000,
              max_requests=LOAD_MAX_REQUESTS, max_duration_s=RECOVERY_BOUND_S + 30) as load:
        load.wait_for_successes(20, timeout_s=20)
        os.kill(broker, signal.SIGSTOP)
        try:
            time.sleep(5)  # the fault itself: longer than the workers' 3 s liveness
        finally:
            os.kill(broker, signal.SIGCONT)
        continued_s = time.monotonic()
        load.wait_for_successes(10, after_s=continued_s, via="http",
                                timeout_s=RECOVERY_BOUND_S)
        load.wait_for_successes(10, after_s=continued_s, via="zmq",
                                timeout_s=RECOVERY_BOUND_S)
    outcomes = load.stop()  # raises LoadHung if any call never returned
    assert not over_bound(outcomes, load.call_bound_s), "a call outlived its bound"
    assert broker_of(server) == broker  # the same broker, continued, not replaced
    server.wait_for(lambda: len(server.workers("echo")) == 2, timeout_s=RECOVERY_BOUND_S,
                    what="two workers again")


def _answers(client: Client) -> bool:
    try:
        return client.predict("echo", b"after").body == b"after"
    except Exception:  # DeadlineExceeded while it reconnects
        return False


def test_stop_during_the_restart_backoff_stops_for_good(make_server):
    server = make_server({"echo": "echo"}, "--frontends", "0")
    os.kill(broker_of(server), signal.SIGKILL)
    result = server.stop()
    assert result.returncode == 0, result.stderr
    assert run_dir.lock_holder(server.run_dir, run_dir.KEEPER_LOCK) is None
    assert run_dir.lock_holder(server.run_dir, run_dir.BROKER_LOCK) is None


def foreground(run_directory: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zerobatch.api.cli", "start", "--foreground", "--run-dir",
         run_directory, "--client-address", f"tcp://127.0.0.1:{free_port()}",
         "--model-store", TEST_MODELS, "--models", "echo=echo", *isolated_flags(), *flags],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def foreground_servers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stderr.close()


def test_in_the_foreground_the_exit_status_says_whether_to_restart(tmp_path,
                                                                    foreground_servers):
    """0 after a requested stop; EXIT_ADDRESS_IN_USE for a port taken (a restart would fail
    the same way); a killed broker's status is its signal, which systemd and Kubernetes
    restart."""
    port = free_port()
    server = foreground(str(tmp_path / "a"), "--http-port", str(port))
    foreground_servers.append(server)
    broker_lock = (str(tmp_path / "a"), run_dir.BROKER_LOCK)
    deadline = time.monotonic() + 30
    while run_dir.lock_holder(*broker_lock) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_dir.lock_holder(*broker_lock) == server.pid  # the CLI became the broker
    _wait_for_port(port)
    taken = foreground(str(tmp_path / "b"), "--http-port", str(port))
    foreground_servers.append(taken)
    assert taken.wait(60) == EXIT_ADDRESS_IN_USE
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    killed = foreground(str(tmp_path / "c"), "--frontends", "0")
    foreground_servers.append(killed)
    deadline = time.monotonic() + 30
    while run_dir.lock_holder(str(tmp_path / "c"), run_dir.BROKER_LOCK) is None:
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
