"""Scaling a model's workers up and down on a running server, under load over both clients:
the `scale` control call (on the control socket) starts new workers, each initialized once,
and retires the newest ones gracefully: no request is lost."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.load import Load, errors, over_bound
from tests.support.servers import Server
from zerobatch.api.client import Client

#: from the scale call to the new workers ready, or the retired ones gone (a worker's start
#: on a loaded 2-core machine)
SCALE_BOUND_S = 30.0
#: the load's count bound: the load is bounded by its duration, and still sends at the end
LOAD_MAX_REQUESTS = 200_000

HANDLER = '''\
import os
import time


class Counted:
    """Echoes each body; its initialize appends this process's pid to $ZB_INIT_LOG."""

    def initialize(self, context):
        with open(os.environ["ZB_INIT_LOG"], "a") as log:
            log.write(f"{os.getpid()}\\n")

    def handle(self, data, context):
        time.sleep(0.002)
        return [row.get("body") for row in data]
'''


@pytest.fixture
def counted_model(tmp_path):
    model = tmp_path / "counted"
    (model / "MAR-INF").mkdir(parents=True)
    (model / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"runtime": "python", "model": {"modelName": "counted", "modelVersion": "1.0",
                                        "handler": "counted_handler.py"}}))
    (model / "counted_handler.py").write_text(HANDLER)
    return str(model)


def initialized_pids(path: str) -> list[int]:
    try:
        with open(path) as handle:
            return [int(line) for line in handle.read().split()]
    except FileNotFoundError:
        return []


def scale(server: Server, workers: int) -> dict:
    with Client(server.control_address, timeout_ms=5000) as control:
        return control.control("scale", model="counted", workers=workers)


def worker_pids(server: Server) -> set[int]:
    return {w["pid"] for w in server.workers("counted")}


def test_scale_up_and_down_under_load_loses_no_request(make_server, counted_model, tmp_path):
    init_log = str(tmp_path / "initialized")
    env = {**os.environ, "ZB_INIT_LOG": init_log}
    server = make_server({"counted": counted_model}, "--workers", "1", "--frontends", "1",
                         "--max-queue", "1000", env=env)
    assert len(initialized_pids(init_log)) == 1
    with Load(server, "counted", b"load", http_lanes=2, zmq_lanes=2, timeout_ms=10_000,
              max_requests=LOAD_MAX_REQUESTS, max_duration_s=3 * SCALE_BOUND_S) as load:
        load.wait_for_successes(20, timeout_s=20)
        assert scale(server, 3)["status"].startswith("Processing worker updates")
        grown = server.wait_for(lambda: len(pids := worker_pids(server)) == 3 and pids,
                                timeout_s=SCALE_BOUND_S, what="three workers")
        load.wait_for_successes(20, timeout_s=20)
        scale(server, 1)
        kept = server.wait_for(lambda: len(pids := worker_pids(server)) == 1 and pids,
                               timeout_s=SCALE_BOUND_S, what="one worker again")
        load.wait_for_successes(20, timeout_s=20)
    outcomes = load.stop()  # raises LoadHung if any call never returned
    assert errors(outcomes) == [], "a request failed while the workers were scaled"
    assert not over_bound(outcomes, load.call_bound_s)
    # each new worker ran its handler's initialize once; the old one was not reloaded
    assert sorted(initialized_pids(init_log)) == sorted(grown)
    assert kept < grown
    for pid in grown - kept:
        server.wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"),
                        timeout_s=SCALE_BOUND_S, what=f"retired worker {pid} gone")
    with open(os.path.join(server.run_dir, "zerobatch.log")) as log:
        text = log.read()
    assert text.count("exited with code 0") >= 2, "the retired workers did not stop cleanly"
    assert "lost" not in text.split("scaled to 1 worker")[1]
