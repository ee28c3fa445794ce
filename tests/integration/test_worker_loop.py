"""The worker loop against a fake broker: READY, BATCH -> W_REPLY, errors, stop, exit codes.

The test binds the ROUTER (tests.support.fake_worker_broker) on a random loopback port and runs the
worker either in a thread (WorkerLoop.run) or as a real `python -m zerobatch.worker` process
that a finalizer always kills. Every wait is a bounded poll on the socket; nothing sleeps.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.models import write_model_dir
from tests.support.fake_worker_broker import FakeBroker, item
from tests.support.thread_worker import ThreadWorker, worker_config
from zerobatch import protocol
from zerobatch.launch import module_argv
from zerobatch.worker.loop import BROKER_LOST, STOPPED

pytestmark = pytest.mark.integration


@pytest.fixture
def thread_worker(worker_broker):
    started = []

    def start(**kwargs):
        worker = ThreadWorker(worker_config(worker_broker, **kwargs))
        started.append(worker)
        worker.identity, worker.info = worker_broker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def process_worker(worker_broker, tmp_path):
    started = []

    def spawn(config, preload=None, python_path=()):
        """A worker process for config; with preload (module names), one that imports them
        and then reads its configuration from stdin (proc.stdin), as the broker starts it.
        python_path: folders put first on its PYTHONPATH."""
        log_file = open(tmp_path / f"worker-{len(started)}.log", "w")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*python_path, env.get("PYTHONPATH")]))
        argv = module_argv("zerobatch.worker", "--config", config.to_json())
        stdin = subprocess.DEVNULL
        if preload is not None:
            argv = module_argv("zerobatch.worker", "--config", "-",
                               *[arg for name in preload for arg in ("--preload", name)])
            stdin = subprocess.PIPE
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdin=stdin,
                                stdout=log_file, stderr=subprocess.STDOUT)
        proc.log_path = log_file.name
        started.append((proc, log_file))
        return proc

    yield spawn
    for proc, log_file in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()
        log_file.close()


def read_log(proc):
    with open(proc.log_path) as f:
        return f.read()


# ------------------------------------------------------------------ in a thread

def test_ready_info(thread_worker):
    worker = thread_worker(worker_id="w-ready")
    assert worker.identity == b"w-ready"
    assert worker.info == {"model": "echo", "version": "1.0", "worker_id": "w-ready",
                           "gpu_id": None, "pid": os.getpid()}


def test_echo_json_text_and_binary(thread_worker, worker_broker):
    worker = thread_worker()
    [reply] = worker_broker.request(worker.identity, 1, [item('{"x": [1, 2]}')])
    assert (reply.kind, reply.status, reply.content_type) == ("reply", 200, "application/json")
    assert json.loads(reply.body) == {"x": [1, 2]}
    [reply] = worker_broker.request(worker.identity, 2, [item("plain text", "text/plain")])
    assert (reply.content_type, reply.body) == ("text/plain", b"plain text")
    blob = bytes(range(256)) * 1000
    [reply] = worker_broker.request(worker.identity, 3, [item(blob, "application/octet-stream")])
    assert (reply.content_type, reply.body) == ("application/octet-stream", blob)


def test_a_batch_of_three_is_answered_in_order(thread_worker, worker_broker):
    worker = thread_worker(model="batch_size_reporter")
    replies = worker_broker.request(worker.identity, 7, [item(f'"{c}"') for c in "abc"])
    assert [json.loads(r.body) for r in replies] == [
        {"batch_size": 3, "body": c} for c in "abc"]


def test_handler_exception_then_next_batch_works(thread_worker, worker_broker):
    worker = thread_worker(model="failing")
    replies = worker_broker.request(worker.identity, 1, [item('"a"'), item('"fail"'), item('"c"')])
    assert [(r.kind, r.code, r.status) for r in replies] == [
        ("reply", None, 200), ("error", "handler_error", 500), ("reply", None, 200)]
    assert replies[1].message == "ValueError: asked to fail"
    [reply] = worker_broker.request(worker.identity, 2, [item('{"fine": true}')])
    assert json.loads(reply.body) == {"fine": True}


def test_wrong_result_count_answers_errors(thread_worker, worker_broker, tmp_path):
    path = write_model_dir(str(tmp_path / "short"), """
        def handle(data, context):
            return None if data is None else []
        """)
    worker = thread_worker(model="short", path=path)
    replies = worker_broker.request(worker.identity, 5, [item("1"), item("2"), item("3")])
    assert [(r.kind, r.code) for r in replies] == [("error", "result_count_mismatch")] * 3
    assert all(r.message == "handler returned 0 results for 1 requests" for r in replies)


def test_malformed_messages_are_dropped(thread_worker, worker_broker):
    worker = thread_worker()
    send_raw = worker_broker.send_raw
    send_raw(worker.identity, [b"ZB9", protocol.W_BATCH, b"\0" * 8, b"m", b"b"])
    send_raw(worker.identity, [protocol.VERSION, protocol.W_BATCH, b"short", b"m", b"b"])
    send_raw(worker.identity, [protocol.VERSION, protocol.W_BATCH, b"\0" * 8, b"m"])
    send_raw(worker.identity, [protocol.VERSION, protocol.W_READY, b"?"])
    send_raw(worker.identity, protocol.HEARTBEAT_FRAMES)
    [reply] = worker_broker.request(worker.identity, 9, [item('"still here"')])
    assert reply.body == b"still here"


def test_stop_event_disconnects(thread_worker, worker_broker):
    worker = thread_worker()
    worker.stop()
    assert worker.reason == STOPPED
    frames = worker_broker.wait_command(protocol.W_DISCONNECT, timeout_s=5)
    assert frames == [worker.identity, *protocol.DISCONNECT_FRAMES]


def test_a_disconnect_from_the_broker_ends_the_loop(thread_worker, worker_broker):
    """The broker dismisses a worker of a model it does not serve (broker/core.py)."""
    worker = thread_worker()
    worker_broker.send_raw(worker.identity, protocol.DISCONNECT_FRAMES)
    worker.thread.join(5)
    assert not worker.thread.is_alive()
    assert worker.reason == STOPPED and worker.loop.dismissed


def test_broker_silence_ends_the_loop():
    with FakeBroker(answer_heartbeats=False) as silent:
        worker = ThreadWorker(worker_config(silent, interval_ms=100))
        try:
            silent.wait_ready()
            worker.thread.join(5)
            assert worker.reason == BROKER_LOST
            assert "no message from the broker" in worker.loop.heartbeat.lost_reason
        finally:
            worker.stop()


# ------------------------------------------------------------------ as a process

def test_process_serves_and_stops_cleanly_on_sigterm(worker_broker, process_worker):
    proc = process_worker(worker_config(worker_broker, worker_id="w-proc"))
    identity, info = worker_broker.wait_ready(timeout_s=30)
    assert identity == b"w-proc" and info["pid"] == proc.pid
    [reply] = worker_broker.request(identity, 1, [item('{"hello": "world"}')])
    assert json.loads(reply.body) == {"hello": "world"}
    proc.send_signal(signal.SIGTERM)
    worker_broker.wait_command(protocol.W_DISCONNECT, timeout_s=10)
    assert proc.wait(10) == 0
    assert "disconnected" in read_log(proc)


def test_a_preloaded_process_reads_its_config_from_stdin(worker_broker, process_worker):
    config = worker_config(worker_broker, worker_id="w-preloaded")
    proc = process_worker(config, preload=["json", "no_such_module_zb"])
    proc.stdin.write(config.to_json().encode() + b"\n")
    proc.stdin.close()
    identity, info = worker_broker.wait_ready(timeout_s=30)
    assert identity == b"w-preloaded" and info["pid"] == proc.pid
    [reply] = worker_broker.request(identity, 1, [item('"preloaded"')])
    assert reply.body == b"preloaded"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # a module that is not installed is skipped quietly: a handler that needs it says so
    assert "no_such_module_zb" not in read_log(proc)


def test_a_preloaded_process_that_gets_no_config_exits_0(worker_broker, process_worker):
    proc = process_worker(worker_config(worker_broker), preload=["json"])
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert worker_broker.router.poll(200) == 0  # it never said READY


def test_heartbeats_continue_during_a_long_batch(worker_broker, process_worker):
    proc = process_worker(worker_config(worker_broker, model="slow", interval_ms=200))
    identity, _ = worker_broker.wait_ready(timeout_s=30)
    worker_broker.send_batch(identity, 1, [item('{"sleep_ms": 2500}'), item('{"sleep_ms": 10}')])
    sent_at = time.monotonic()
    replies = worker_broker.wait_reply(1, timeout_s=20)
    replied_at = time.monotonic()
    assert [json.loads(r.body)["batch_size"] for r in replies] == [2, 2]
    assert replied_at - sent_at >= 2.4
    during = [t for ident, t in worker_broker.heartbeats
              if ident == b"w-test" + protocol.HEARTBEAT_SUFFIX and sent_at <= t <= replied_at]
    assert len(during) >= 5, f"only {len(during)} heartbeats during a 2.5 s batch"
    assert proc.poll() is None


def test_process_exits_when_the_broker_goes_silent(process_worker):
    with FakeBroker(answer_heartbeats=False) as silent:
        proc = process_worker(worker_config(silent, interval_ms=100))
        silent.wait_ready(timeout_s=30)
        ready_at = time.monotonic()
        assert proc.wait(10) == 4
        assert time.monotonic() - ready_at < 5
    assert "broker lost: no message from the broker" in read_log(proc)


def test_process_reports_a_model_that_cannot_load(worker_broker, process_worker, tmp_path):
    proc = process_worker(worker_config(worker_broker, model="missing", path=str(tmp_path)))
    assert proc.wait(30) == 3
    log = read_log(proc)
    assert "MAR-INF/MANIFEST.json: manifest not found" in log
    assert "worker[" in log  # the log format names the process


def test_a_worker_without_torch_says_so_in_one_line(worker_broker, process_worker, tmp_path):
    """torch blocked in the process (as if not installed): the preload skips it quietly, the
    handler's `import torch` becomes the model's load error, one line, sent to the broker."""
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    path = write_model_dir(str(tmp_path / "needs_torch"), """
        import torch

        def handle(data, context):
            return data
        """)
    config = worker_config(worker_broker, model="needs_torch", path=path)
    proc = process_worker(config, preload=["torch"], python_path=[str(blocker)])
    proc.stdin.write(config.to_json().encode() + b"\n")
    proc.stdin.close()
    frames = worker_broker.wait_command(protocol.W_LOAD_FAILED, timeout_s=30)
    assert proc.wait(30) == 3
    error = protocol.parse_load_failed(frames[3])["error"]
    assert error == ("model needs_torch: its handler needs torch, which is not installed in "
                     "the Python that runs the workers; install the build for your hardware: "
                     "https://pytorch.org/get-started/locally/")
    log = read_log(proc)
    assert error in log
    assert "Traceback" not in log and "--preload" not in log


def test_process_rejects_a_bad_config(tmp_path):
    result = subprocess.run(module_argv("zerobatch.worker", "--config", "{not json"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "invalid --config" in result.stderr
