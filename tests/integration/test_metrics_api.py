"""The metrics API of a real server (api/metrics_server.py): Prometheus text on /metrics that
prometheus_client's parser reads, the broker's figures exact after a known run of requests
(served, refused with the queue full, expired in the queue) through two front ends and two
workers, every child given the metrics folder, and a killed process's live gauges dropped
while /metrics serves on."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.support.metrics import families, value, write_process_metric
from tests.support.servers import ROOT, Server, processes_mentioning

MODEL = {"model_name": "slow", "model_version": "1.0"}
#: what every phase-one request sleeps: the broker learns that a batch takes this long
TEACH_MS = 700
#: the deadline of the requests that wait behind the busy workers: under two learned runs,
#: so none is sent ahead to a busy worker, and far under BLOCK_MS, so they expire queued
EXPIRE_MS = 1000
BLOCK_MS = 4000


def scrape(server: Server, query: str = "") -> str:
    status, headers, body = server.metrics(query)
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode()


def wait_value(server: Server, name: str, expected: float, **labels: str) -> str:
    """Scrape until the sample has the expected value; the last text."""
    texts = []

    def reached() -> bool:
        texts.append(scrape(server))
        return value(texts[-1], name, **labels) == expected

    server.wait_for(reached, timeout_s=30, what=f"{name}{labels} == {expected}")
    return texts[-1]


def pids_running(server: Server, module: str) -> list[int]:
    found = []
    for pid in processes_mentioning(server.run_dir):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if module in argv:
            found.append(pid)
    return found


def environment(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = handle.read().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def predict(server: Server, sleep_ms: int, timeout_ms: int) -> int:
    return server.predict("slow", b'{"sleep_ms": %d}' % sleep_ms, timeout_ms=timeout_ms)[0]


def test_broker_figures_are_exact_and_dead_processes_leave(make_server):
    server = make_server({"slow": "slow"}, "--workers", "2", "--batch-size", "1",
                         "--max-queue", "2", "--max-batch-delay", "0", "--admission", "queue",
                         "--frontends", "2")
    folder = os.path.join(server.run_dir, "metrics")
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    for module in ("zerobatch.api.frontend", "zerobatch.worker",
                   "zerobatch.api.management_server", "zerobatch.api.metrics_server"):
        pids = pids_running(server, module)
        assert pids, module
        for pid in pids:
            assert environment(pid).get("PROMETHEUS_MULTIPROC_DIR") == folder, module

    # two served one after the other teach the broker that a batch takes TEACH_MS
    assert [predict(server, TEACH_MS, 30_000) for _ in range(2)] == [200, 200]
    with ThreadPoolExecutor(4) as pool:
        blockers = [pool.submit(predict, server, BLOCK_MS, 30_000) for _ in range(2)]
        wait_value(server, "zerobatch_in_flight_requests", 2, **MODEL)  # both workers busy
        expiring = [pool.submit(predict, server, 0, EXPIRE_MS) for _ in range(2)]
        during = wait_value(server, "zerobatch_queue_depth", 2, **MODEL)  # max_queue
        assert value(during, "zerobatch_in_flight_requests", **MODEL) == 2
        assert [predict(server, 0, EXPIRE_MS) for _ in range(3)] == [503, 503, 503]
        assert [future.result() for future in expiring] == [504, 504]
        assert [future.result() for future in blockers] == [200, 200]

    text = wait_value(server, "zerobatch_in_flight_requests", 0, **MODEL)
    expected = {
        ("zerobatch_requests_total", ()): 6,  # 2 + 2 + 2 accepted; the refused not counted
        ("zerobatch_refusals_total", (("reason", "queue_full"),)): 3,
        ("zerobatch_refusals_total", (("reason", "deadline_unreachable"),)): 0,
        ("zerobatch_expired_total", ()): 2,
        ("zerobatch_queue_depth", ()): 0,
        ("zerobatch_worker_restarts_total", ()): 0,
        ("zerobatch_load_failures_total", ()): 0,
        ("zerobatch_batch_size_count", ()): 4,  # the expired and refused never ran
        ("zerobatch_batch_size_sum", ()): 4,
        ("zerobatch_batch_size_bucket", (("le", "1.0"),)): 4,
        ("zerobatch_queue_seconds_count", ()): 4,
        **{("zerobatch_workers", (("state", state),)): 2
           for state in ("live", "desired", "min", "max")},
    }
    assert {key: value(text, key[0], **dict(key[1]), **MODEL) for key in expected} == expected
    queue_s = value(text, "zerobatch_queue_seconds_sum", **MODEL)
    latency_us = value(text, "ts_queue_latency_microseconds_total", hostname=socket.gethostname(),
                       **MODEL)
    assert abs(latency_us - queue_s * 1e6) < 1
    assert value(text, "QueueTime", Level="Host", Hostname=socket.gethostname()) >= 0
    assert "\nts_queue_latency_microseconds{" in text  # TorchServe's name, no _total
    only = families(scrape(server, "?name[]=zerobatch_refusals_total&name[]=QueueTime"))
    assert set(only) == {"zerobatch_refusals", "QueueTime"}

    # a worker killed: counted as a restart, and replaced
    worker_pid = server.workers("slow")[0]["pid"]
    os.kill(worker_pid, signal.SIGKILL)
    wait_value(server, "zerobatch_worker_restarts_total", 1, **MODEL)
    wait_value(server, "zerobatch_workers", 2, state="live", **MODEL)

    # a front end's live gauge (as it would write it) and counter; the front end killed:
    # once the supervisor has reaped it, its gauge is gone, its counts stay
    victim = sorted(server.frontend_pids())[0]
    write_process_metric(folder, victim, "gauge", "test_frontend_live", 1, mode="livesum")
    write_process_metric(folder, victim, "counter", "test_frontend_requests", 5)
    text = scrape(server)
    assert value(text, "test_frontend_live") == 1
    os.kill(victim, signal.SIGKILL)
    server.wait_for(lambda: victim not in server.frontend_pids()
                    and len(server.frontend_pids()) == 2, timeout_s=30,
                    what="the killed front end to be restarted")
    server.wait_for(lambda: "test_frontend_live" not in families(scrape(server)),
                    timeout_s=30, what="the dead front end's live gauge to go")
    text = scrape(server)
    assert value(text, "test_frontend_requests_total") == 5
    assert value(text, "zerobatch_requests_total", **MODEL) == 6
    assert server.predict("slow", b'{"sleep_ms": 0}')[0] == 200


def test_with_the_metrics_api_off_no_child_gets_the_folder(make_server):
    server = make_server({"echo": "echo"}, "--metrics-address", "none",
                         env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": "/elsewhere"})
    assert pids_running(server, "zerobatch.api.metrics_server") == []
    children = (pids_running(server, "zerobatch.api.frontend")
                + pids_running(server, "zerobatch.worker"))
    assert children
    for pid in children:
        assert "PROMETHEUS_MULTIPROC_DIR" not in environment(pid)
    assert not os.path.exists(os.path.join(server.run_dir, "metrics"))


def test_the_broker_does_not_load_prometheus_client(tmp_path):
    code = ("import sys, zerobatch.broker.__main__, zerobatch.broker.core, "
            "zerobatch.broker.loop, zerobatch.broker.supervisor, zerobatch.metrics_dir; "
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, timeout=60,
                            capture_output=True, text=True, env={**os.environ,
                                                                 "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
