"""The metrics app (api/metrics_app.py) in process (falcon.testing): the broker's families
from a canned `metrics` answer and from a real BrokerCore's, QueueTime between scrapes, a
silent broker, TorchServe's name[] filter, the processes' files (summed, a dead process's
live gauges dropped), and the run directory's metrics folder (zerobatch/metrics_dir.py)."""

from __future__ import annotations

import logging
import os
import stat

import falcon.testing
import msgpack
import pytest

from tests.support.broker_core import add, make_core, ready, reply_batch, request, take_back
from tests.support.metrics import families, samples, value, write_process_metric
from zerobatch import metrics_dir
from zerobatch.api.metrics_app import (
    BROKER_FAMILIES,
    broker_families,
    create_metrics_app,
    exposition,
)
from zerobatch.errors import BrokerUnavailable, ConfigError

HOST = "testhost"
MODEL = {"model_name": "echo", "model_version": "1.0"}


def model_answer(**overrides) -> dict:
    entry = {"model": "echo", "version": "1.0", "default": True, "queued": 3, "in_flight": 4,
             "workers": {"live": 2, "desired": 3, "min": 1, "max": 5},
             "refusals": {"queue_full": 7, "deadline_unreachable": 2},
             "expired": 5, "worker_restarts": 1, "load_failures": 6, "requests": 40,
             "batch_sizes": [[1, 10], [3, 2], [600, 1]],
             "queue_counts": [8, 3, 1], "queue_ns_total": 45_500_000}
    entry.update(overrides)
    return entry


def answer(*models: dict, worker_thread_ns: int | None = 2_500_000) -> dict:
    return {"queue_buckets_ns": [1_000_000, 10_000_000], "worker_thread_ns": worker_thread_ns,
            "models": list(models)}


CANNED = answer(model_answer())


class FakeControl:
    """`control(op, ...)` answering each call with the next of `answers` (an exception is
    raised); the calls are kept."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int | None]] = []

    async def control(self, op: str, timeout_ms: int | None = None, **args) -> dict:
        self.calls.append((op, timeout_ms))
        reply = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


def client(control, folder) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_metrics_app(control, str(folder), hostname=HOST,
                                                        broker_timeout_ms=250))


def scrape(test_client, query: str = "") -> str:
    result = test_client.simulate_get("/metrics", query_string=query)
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return result.text


# ---------------------------------------------------------------------- the broker's families

def test_a_canned_answer_becomes_the_documented_families():
    text = exposition(broker_families(CANNED, HOST, 3.5)).decode()
    parsed = families(text)
    assert {name: family.type for name, family in parsed.items()} == {
        "ts_queue_latency_microseconds": "counter", "QueueTime": "gauge",
        "WorkerThreadTime": "gauge",
        "zerobatch_queue_depth": "gauge", "zerobatch_in_flight_requests": "gauge",
        "zerobatch_workers": "gauge", "zerobatch_refusals": "counter",
        "zerobatch_expired": "counter", "zerobatch_worker_restarts": "counter",
        "zerobatch_load_failures": "counter", "zerobatch_requests": "counter",
        "zerobatch_batch_size": "histogram", "zerobatch_queue_seconds": "histogram",
        "zerobatch_default_version": "gauge"}
    assert set(parsed) == set(BROKER_FAMILIES)
    assert samples(text)[("ts_queue_latency_microseconds_total", (
        ("hostname", HOST), ("model_name", "echo"), ("model_version", "1.0")))] == 45500.0
    assert value(text, "QueueTime", Level="Host", Hostname=HOST) == 3.5
    assert value(text, "WorkerThreadTime", Level="Host", Hostname=HOST) == 2.5
    assert value(text, "zerobatch_queue_depth", **MODEL) == 3
    assert value(text, "zerobatch_in_flight_requests", **MODEL) == 4
    assert {state: value(text, "zerobatch_workers", state=state, **MODEL)
            for state in ("live", "desired", "min", "max")} == {
        "live": 2, "desired": 3, "min": 1, "max": 5}
    assert value(text, "zerobatch_refusals_total", reason="queue_full", **MODEL) == 7
    assert value(text, "zerobatch_refusals_total", reason="deadline_unreachable",
                 **MODEL) == 2
    assert value(text, "zerobatch_expired_total", **MODEL) == 5
    assert value(text, "zerobatch_worker_restarts_total", **MODEL) == 1
    assert value(text, "zerobatch_load_failures_total", **MODEL) == 6
    assert value(text, "zerobatch_requests_total", **MODEL) == 40
    # batch sizes 1 (x10), 3 (x2), 600 (x1: past the last bucket)
    assert [value(text, "zerobatch_batch_size_bucket", le=le, **MODEL)
            for le in ("1.0", "2.0", "4.0", "256.0", "512.0", "+Inf")] == [10, 10, 12, 12,
                                                                          12, 13]
    assert value(text, "zerobatch_batch_size_count", **MODEL) == 13
    assert value(text, "zerobatch_batch_size_sum", **MODEL) == 616
    assert [value(text, "zerobatch_queue_seconds_bucket", le=le, **MODEL)
            for le in ("0.001", "0.01", "+Inf")] == [8, 11, 12]
    assert value(text, "zerobatch_queue_seconds_count", **MODEL) == 12
    assert value(text, "zerobatch_queue_seconds_sum", **MODEL) == pytest.approx(0.0455)
    assert value(text, "zerobatch_default_version", **MODEL) == 1


def test_before_the_first_batch_there_is_no_worker_thread_time():
    text = exposition(broker_families(answer(model_answer(), worker_thread_ns=None), HOST,
                                      0.0)).decode()
    assert families(text)["WorkerThreadTime"].samples == []


def test_only_a_default_version_has_a_default_version_sample():
    text = exposition(broker_families(answer(model_answer(), model_answer(
        version="2.0", default=False)), HOST, 0.0)).decode()
    assert [(s.labels["model_version"], s.value) for s in families(text)[
        "zerobatch_default_version"].samples] == [("1.0", 1.0)]


def test_torchserve_counters_keep_their_name_without_total():
    text = exposition(broker_families(CANNED, HOST, 0.0)).decode()
    assert "# TYPE ts_queue_latency_microseconds counter\n" in text
    assert ('ts_queue_latency_microseconds{hostname="testhost",model_name="echo",'
            'model_version="1.0"} 45500.0\n') in text
    assert "ts_queue_latency_microseconds_total" not in text
    assert "# TYPE zerobatch_refusals_total counter\n" in text  # ours end in _total


def test_a_real_cores_answer_survives_the_wire_and_becomes_families():
    core = make_core("python")
    add(core, batch_size=2)
    ready(core, 0)
    request(core, b"a", 0)
    request(core, b"b", 0)
    (batch,) = take_back(core)
    reply_batch(core, batch, 5_000_000)
    wire = msgpack.unpackb(msgpack.packb(core.metrics()), raw=False)  # as the client decodes
    text = exposition(broker_families(wire, HOST, 0.0)).decode()
    assert value(text, "zerobatch_requests_total", **MODEL) == 2
    assert value(text, "zerobatch_batch_size_bucket", le="2.0", **MODEL) == 1
    assert value(text, "zerobatch_queue_seconds_count", **MODEL) == 2
    assert value(text, "zerobatch_refusals_total", reason="queue_full", **MODEL) == 0


def test_queue_time_is_the_mean_since_the_previous_scrape(tmp_path):
    control = FakeControl(
        answer(model_answer(queue_counts=[1, 1, 0], queue_ns_total=70_000_000)),
        answer(model_answer(queue_counts=[1, 1, 0], queue_ns_total=70_000_000)),  # none
        answer(model_answer(queue_counts=[1, 2, 0], queue_ns_total=100_000_000),
               model_answer(version="2.0", queue_counts=[1, 0, 0], queue_ns_total=2_000_000)),
        answer(model_answer(queue_counts=[0, 0, 0], queue_ns_total=0)),  # broker restarted
        answer(model_answer(queue_counts=[0, 1, 0], queue_ns_total=4_000_000)))
    test_client = client(control, tmp_path)
    seen = [value(scrape(test_client), "QueueTime", Level="Host", Hostname=HOST)
            for _ in range(5)]
    # 70 ms over 2; nothing new: unchanged; 30 ms + 2 ms over 2 (every model); a restart:
    # unchanged, measured from there; 4 ms over 1
    assert seen == [35.0, 35.0, 16.0, 16.0, 4.0]
    assert control.calls == [("metrics", 250)] * 5


def test_a_silent_broker_leaves_its_families_out_and_is_logged_once(tmp_path, caplog):
    write_process_metric(str(tmp_path), 4242, "counter", "Requests2XX", 3,
                         {"Level": "Host", "Hostname": HOST})
    silent = BrokerUnavailable("the broker did not answer")
    control = FakeControl(silent, silent, CANNED)
    test_client = client(control, tmp_path)
    with caplog.at_level(logging.INFO, logger="zerobatch.metrics"):
        first, second, third = (scrape(test_client) for _ in range(3))
    for text in (first, second):
        assert set(families(text)) == {"Requests2XX"}
    assert set(BROKER_FAMILIES) < set(families(third))
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "did not answer the metrics call" in m]) == 1
    assert len([m for m in messages if "answers the metrics call again" in m]) == 1


def test_an_answer_it_does_not_understand_is_left_out(tmp_path, caplog):
    test_client = client(FakeControl({"models": [{"model": "echo"}]}), tmp_path)
    with caplog.at_level(logging.WARNING, logger="zerobatch.metrics"):
        assert scrape(test_client) == ""
    assert "not understood" in caplog.text


# ---------------------------------------------------------------------- name[]

def test_the_name_filter_keeps_the_families_named(tmp_path):
    test_client = client(FakeControl(CANNED), tmp_path)
    text = scrape(test_client, "name[]=ts_queue_latency_microseconds"
                               "&name[]=zerobatch_refusals_total")
    assert set(families(text)) == {"ts_queue_latency_microseconds", "zerobatch_refusals"}
    # a family by its own name, or by one of its samples' names
    assert set(families(scrape(test_client, "name[]=zerobatch_batch_size"))) == {
        "zerobatch_batch_size"}
    assert set(families(scrape(test_client, "name[]=zerobatch_queue_seconds_bucket"
                                            "&name[]=QueueTime"))) == {
        "zerobatch_queue_seconds", "QueueTime"}
    assert scrape(test_client, "name[]=nothing_of_that_name") == ""


def test_the_broker_is_not_asked_when_no_name_can_be_its(tmp_path):
    write_process_metric(str(tmp_path), 4242, "counter", "Requests2XX", 3,
                         {"Level": "Host", "Hostname": HOST})
    control = FakeControl(CANNED)
    test_client = client(control, tmp_path)
    text = scrape(test_client, "name[]=Requests2XX")
    assert set(families(text)) == {"Requests2XX"} and control.calls == []
    scrape(test_client, "name[]=zerobatch_workers")
    assert control.calls == [("metrics", 250)]


# ---------------------------------------------------------------------- the processes' files

def test_process_files_are_summed_and_a_dead_process_loses_its_live_gauges(tmp_path):
    folder = str(tmp_path)
    for pid, count, connections in ((4242, 3, 7), (4343, 2, 1)):
        write_process_metric(folder, pid, "counter", "Requests2XX", count,
                             {"Level": "Host", "Hostname": HOST})
        write_process_metric(folder, pid, "gauge", "zerobatch_open_connections", connections,
                             mode="livesum")
    test_client = client(FakeControl(CANNED), tmp_path)
    text = scrape(test_client)
    assert value(text, "Requests2XX_total", Level="Host") == 5
    assert 'Requests2XX{Hostname="testhost",Level="Host"} 5.0\n' in text  # TorchServe's name
    assert value(text, "zerobatch_open_connections") == 8
    metrics_dir.mark_process_dead(4242, folder)
    text = scrape(test_client)
    assert value(text, "zerobatch_open_connections") == 1  # the dead one's gauge is gone
    assert value(text, "Requests2XX_total", Level="Host") == 5  # its counts stay
    assert sorted(os.listdir(folder)) == ["counter_4242.db", "counter_4343.db",
                                          "gauge_livesum_4343.db"]


def test_unknown_paths_and_methods_answer_in_torchserves_words(tmp_path):
    test_client = client(FakeControl(CANNED), tmp_path)
    missing = test_client.simulate_get("/models")
    assert missing.status_code == 404
    assert missing.json == {"code": 404, "type": "ResourceNotFoundException",
                            "message": "Requested resource is not found, please refer to "
                                       "API document."}
    refused = test_client.simulate_post("/metrics", body=b"x")
    assert refused.status_code == 405 and refused.json["type"] == "MethodNotAllowedException"


def test_a_missing_metrics_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        create_metrics_app(FakeControl(CANNED), str(tmp_path / "absent"), hostname=HOST)


# ---------------------------------------------------------------------- the metrics folder

def test_the_metrics_folder_is_made_private_and_emptied_of_old_files(tmp_path):
    folder = tmp_path / "metrics"
    assert metrics_dir.prepare(str(folder)) == 0
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    for name in ("counter_1.db", "gauge_livesum_2.db", "notes.txt"):
        (folder / name).write_bytes(b"x")
    os.chmod(folder, 0o755)
    assert metrics_dir.prepare(str(folder)) == 2
    assert os.listdir(folder) == ["notes.txt"]
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700


@pytest.mark.parametrize("make", ["symlink", "file"])
def test_a_metrics_folder_that_is_not_a_directory_is_refused(tmp_path, make):
    path = tmp_path / "metrics"
    if make == "symlink":
        (tmp_path / "elsewhere").mkdir()
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        metrics_dir.prepare(str(path))


def test_children_get_the_folder_and_never_one_from_the_environment():
    base = {"PATH": "/bin", "PROMETHEUS_MULTIPROC_DIR": "/elsewhere",
            "prometheus_multiproc_dir": "/old"}
    assert metrics_dir.child_environ(base, "/run/zb/metrics") == {
        "PATH": "/bin", "PROMETHEUS_MULTIPROC_DIR": "/run/zb/metrics"}
    assert metrics_dir.child_environ(base, None) == {"PATH": "/bin"}
    assert base["PROMETHEUS_MULTIPROC_DIR"] == "/elsewhere"  # not changed
