"""End to end: the CLI starts a real broker, real workers and real front ends on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from tests.support.servers import (
    ROOT,
    cli,
    free_port,
    json_body,
    processes_mentioning,
)
from zerobatch import protocol as p
from zerobatch.errors import (
    DeadlineExceeded,
    DeadlineUnreachable,
    ModelNotFound,
    RequestTooLarge,
    WorkerLost,
)

pytestmark = pytest.mark.integration


def slow_body(sleep_ms: int, tag: str) -> bytes:
    return json.dumps({"sleep_ms": sleep_ms, "tag": tag}).encode()


def wait_busy(server, model: str) -> None:
    """Wait until the model's (only) worker runs a batch, as the broker reports it."""
    server.wait_for(lambda: server.workers(model)[0]["status"] == "BUSY",
                    what=f"a busy {model} worker")


def queued(server, model: str) -> int:
    return next(m["queued"] for m in server.describe()["models"] if m["modelName"] == model)


def in_parallel(calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


# ---------------------------------------------------------------------- the happy path

def test_ping_and_predict_over_http(shared_server):
    status, _headers, body = shared_server.http("GET", "/ping")
    assert (status, json_body(body)) == (200, {"status": "Healthy"})
    status, headers, body = shared_server.predict("echo", b'{"x": [1, 2]}')
    assert status == 200
    assert "content-type" not in headers  # the handler set none: TorchServe sends none
    assert json_body(body) == {"x": [1, 2]}
    status, headers, body = shared_server.predict("echo", b"hello", "text/plain")
    assert (status, body) == (200, b"hello")


def test_answers_carry_torchserves_caching_headers(shared_server):
    """TorchServe's front end forbids caching every answer of its inference and management
    APIs (a GET /predictions is a prediction too); the metrics API is left to itself."""
    expected = {"cache-control": "no-cache; no-store, must-revalidate, private",
                "expires": "Thu, 01 Jan 1970 00:00:00 UTC", "pragma": "no-cache"}
    answers = [shared_server.predict("echo", b'{"x": 1}'), shared_server.http("GET", "/ping"),
               shared_server.http("POST", "/predictions/no_such_model", b"x"),
               shared_server.management("GET", "/models")]
    for status, headers, body in answers:
        assert {name: headers.get(name) for name in expected} == expected, (status, body)
    _status, headers, _body = shared_server.metrics()
    assert "pragma" not in headers


def test_predict_over_zeromq(shared_server):
    with shared_server.client() as client:
        reply = client.predict("echo", {"a": 1}, timeout_ms=5000)
        assert reply.status == 200 and reply.json() == {"a": 1}
        assert client.predict("echo", b"\x00\x01raw", timeout_ms=5000).body == b"\x00\x01raw"
        with pytest.raises(ModelNotFound):
            client.predict("nope", b"x", timeout_ms=5000)


def test_unknown_model_is_404_json(shared_server):
    status, _headers, body = shared_server.predict("nope", b"{}")
    assert status == 404
    error = json_body(body)
    assert error == {"code": 404, "type": "ModelNotFoundException",
                     "message": "Model not found: nope"}  # TorchServe's words


def test_concurrent_requests_form_one_batch(shared_server):
    with shared_server.client() as client:
        pending = [client.submit("reporter", {"i": i}, timeout_ms=10_000) for i in range(4)]
        replies = [handle.result() for handle in pending]
    assert [r.json()["batch_size"] for r in replies] == [4, 4, 4, 4]
    assert [r.json()["body"] for r in replies] == [{"i": i} for i in range(4)]


def test_concurrent_http_requests_form_batches(shared_server):
    def call(i):
        return lambda: shared_server.predict("reporter", json.dumps({"i": i}).encode())

    results = in_parallel([call(i) for i in range(8)])
    assert all(status == 200 for status, _h, _b in results)
    sizes = sorted(json_body(body)["batch_size"] for _s, _h, body in results)
    assert sizes[-1] > 1, f"no batching happened: {sizes}"


def test_cheap_batches_share_messages_and_the_handler_still_sees_one_at_a_time(make_server):
    """Batch size 1 and a handler that takes microseconds: under a flood the broker groups
    batches into one message per worker turn (describe's batchMessages falls behind the batch
    count), and every request still runs in a batch of its own and gets its own answer."""
    from zerobatch.api.aio_client import AsyncClient

    server = make_server({"reporter": "batch_size_reporter"}, "--batch-size", "1",
                         "--max-queue", "1000")

    async def flood(count: int):
        async with AsyncClient(server.client_address) as client:
            return await asyncio.gather(*(
                client.predict("reporter", {"i": i}, timeout_ms=30_000) for i in range(count)))

    sent = 0
    for _wave in range(3):  # grouping needs a queue: the first wave almost always makes one
        replies = asyncio.run(flood(300))
        sent += 300
        assert [reply.json() for reply in replies] == [
            {"batch_size": 1, "body": {"i": i}} for i in range(300)]
        (model,) = server.describe()["models"]
        assert model["batchSizes"] == {"1": sent}
        if model["batchMessages"] < sent:
            break
    else:
        pytest.fail(f"no two batches ever shared a message: {model}")


# ---------------------------------------------------------------------- deadlines and limits

def test_request_expiring_behind_a_slow_batch_gets_504_and_never_runs(shared_server):
    with shared_server.client() as client:
        busy = [client.submit("slow", {"sleep_ms": 1500, "tag": f"busy{i}"}, timeout_ms=10_000)
                for i in range(4)]
        wait_busy(shared_server, "slow")  # the busy batch runs before the short request comes
        started = time.monotonic()
        status, _h, body = shared_server.predict("slow", slow_body(0, "expired"), timeout_ms=300)
        waited = time.monotonic() - started
        assert status == 504, body
        assert json_body(body)["type"] == "DeadlineExceeded"
        assert waited < 1.2, f"the 504 came after {waited:.2f} s, not at the deadline"
        for handle in busy:
            assert handle.result().status == 200
        after = {"sleep_ms": 0, "tag": "after"}
        seen = client.predict("slow", after, timeout_ms=10_000).json()["seen"]
    assert "busy0" in seen and "after" in seen
    assert "expired" not in seen


def test_zeromq_timeout_becomes_the_broker_deadline(shared_server):
    with shared_server.client() as client:
        busy = [client.submit("slow", {"sleep_ms": 1000, "tag": f"z{i}"}, timeout_ms=10_000)
                for i in range(4)]
        wait_busy(shared_server, "slow")
        with pytest.raises(DeadlineExceeded) as raised:
            client.predict("slow", {"sleep_ms": 0, "tag": "zexpired"}, timeout_ms=200)
        assert "queue" in str(raised.value)  # answered by the broker, not a local timeout
        assert isinstance(raised.value, TimeoutError)
        for handle in busy:
            handle.result()


def test_request_that_cannot_make_its_deadline_is_refused_at_once(make_server):
    """Default admission ("deadline"): once the broker has seen a batch take 400 ms, a 150 ms
    request behind a running batch is refused with 503 at once instead of waiting to expire;
    the batch it would have waited for is untouched, and a patient request is served."""
    server = make_server({"slow": "slow"}, "--batch-size", "1", "--max-queue", "8")
    status, _h, _b = server.predict("slow", slow_body(400, "teach"))
    assert status == 200
    with server.client() as client:
        running = client.submit("slow", {"sleep_ms": 400, "tag": "running"}, timeout_ms=10_000)
        wait_busy(server, "slow")
        started = time.monotonic()
        status, _h, body = server.predict("slow", slow_body(0, "late"), timeout_ms=150)
        refused_in_s = time.monotonic() - started
        assert status == 503 and json_body(body)["type"] == "ServiceUnavailableException", body
        assert "150 ms" in json_body(body)["message"]
        assert refused_in_s < 0.1  # refused on arrival, not at its deadline
        assert running.result().status == 200
    status, _h, _b = server.predict("slow", slow_body(0, "patient"), timeout_ms=5_000)
    assert status == 200


def test_a_client_refuses_what_the_broker_said_it_would_refuse(make_server):
    """The broker's deadline_unreachable carries how long requests like it will be refused;
    the client refuses them itself meanwhile (the broker counts one refusal, not three), and
    asks the broker again once that time is over."""
    server = make_server({"slow": "slow"}, "--batch-size", "1", "--max-queue", "8",
                         "--frontends", "0")
    with server.client() as client:
        client.predict("slow", {"sleep_ms": 600, "tag": "teach"}, timeout_ms=10_000)
        running = client.submit("slow", {"sleep_ms": 1200, "tag": "running"},
                                timeout_ms=10_000)
        wait_busy(server, "slow")
        # a 500 ms request would finish after about 1.5 s: refused with a hint of its whole
        # 500 ms, time enough for the two that follow to be refused here
        for _ in range(3):
            with pytest.raises(DeadlineUnreachable) as refused:
                client.predict("slow", {"sleep_ms": 0, "tag": "late"}, timeout_ms=500)
        (model,) = server.describe()["models"]
        assert model["refusedLate"] == 1
        assert refused.value.message.startswith("Model slow cannot answer")
        assert running.result().status == 200  # 1.2 s: the hint has run out
        seen = model["requests"] + model["refusedLate"]
        try:  # the broker decides again (its estimate may still refuse: both are fine)
            client.predict("slow", {"sleep_ms": 0, "tag": "later"}, timeout_ms=500)
        except DeadlineUnreachable:
            pass
        (model,) = server.describe()["models"]
        assert model["requests"] + model["refusedLate"] == seen + 1


def test_full_queue_answers_503_at_once(shared_server):
    with shared_server.client() as client:
        running = [client.submit("slow", {"sleep_ms": 800, "tag": f"q{i}"}, timeout_ms=20_000)
                   for i in range(4)]
        wait_busy(shared_server, "slow")
        # the first full batch of 4 goes ahead to the busy worker; 8 fill the queue
        waiting = [client.submit("slow", {"sleep_ms": 0, "tag": f"w{i}"}, timeout_ms=20_000)
                   for i in range(12)]
        shared_server.wait_for(lambda: queued(shared_server, "slow") == 8, what="8 queued")
        started = time.monotonic()
        status, _h, body = shared_server.predict("slow", slow_body(0, "refused"))
        assert status == 503 and json_body(body)["type"] == "ServiceUnavailableException"
        assert json_body(body)["message"].startswith('Model "slow" has no worker')
        assert time.monotonic() - started < 0.5
        assert all(h.result().status == 200 for h in running + waiting)


def test_body_over_the_limit_is_413(shared_server):
    status, _h, body = shared_server.predict("echo", b"x" * 7_000_000, "application/octet-stream")
    assert status == 413, body


def test_max_request_size_sets_the_limit_over_http_and_zeromq(make_server):
    server = make_server({"echo": "echo"}, "--max-request-size", "1000")
    octets = "application/octet-stream"
    status, _h, body = server.predict("echo", b"x" * 1000, octets)
    assert (status, body) == (200, b"x" * 1000)
    status, _h, body = server.predict("echo", b"x" * 1001, octets)
    assert (status, body) == (413, b"")  # TorchServe's 413 has no body
    with server.client() as client:
        assert client.predict("echo", b"x" * 1000, timeout_ms=5000).body == b"x" * 1000
        with pytest.raises(RequestTooLarge):
            client.predict("echo", b"x" * 1001, timeout_ms=5000)


# ---------------------------------------------------------------------- failures

def test_handler_exception_fails_its_batch_only(shared_server):
    def call(text):
        return lambda: shared_server.predict("failing", text.encode(), "text/plain")

    # The four arrive in one batch of 4 (batch size 4, 300 ms delay); it fails, is retried as
    # 2 + 2 and then 1 + 1 where "fail" is: only "fail" gets the error.
    results = in_parallel([call("fail"), call("ok1"), call("ok2"), call("ok3")])
    assert [status for status, _h, _b in results] == [503, 200, 200, 200]
    assert json_body(results[0][2]) == {"code": 503, "type": "InternalServerException",
                                        "message": "Prediction failed"}  # TorchServe's
    assert [body for _s, _h, body in results[1:]] == [b"ok1", b"ok2", b"ok3"]
    # the sizes of the batches that answered prove the first attempt was one batch of 4
    sizes = sorted(int({k.lower(): v for k, v in headers.items()}["x-batch-size"])
                   for _s, headers, _b in results[1:])
    assert sizes == [1, 2, 2]
    status, _h, body = shared_server.predict("failing", b"fine", "text/plain")
    assert (status, body) == (200, b"fine")


def test_sigkill_worker_mid_batch(shared_server):
    (worker,) = shared_server.workers("slow")
    with shared_server.client() as client:
        pending = [client.submit("slow", {"sleep_ms": 5000, "tag": f"k{i}"}, timeout_ms=20_000)
                   for i in range(4)]
        wait_busy(shared_server, "slow")
        os.kill(worker["pid"], signal.SIGKILL)
        killed = time.monotonic()
        for handle in pending:
            with pytest.raises(WorkerLost):
                handle.result()
        assert time.monotonic() - killed < 1.0
    restarted = shared_server.wait_for(
        lambda: [w for w in shared_server.workers("slow") if w["pid"] != worker["pid"]],
        what="a restarted worker")
    assert restarted[0]["status"] == "READY"
    status, _h, body = shared_server.predict("slow", slow_body(0, "after-kill"))
    assert status == 200, body


def test_garbage_frames_do_not_hurt_the_broker(shared_server):
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(shared_server.client_address)
    try:
        for frames in ([b"junk"], [p.VERSION, b"\xff"], [p.VERSION, p.REQUEST, b"", b""],
                       [p.VERSION, p.REQUEST, b"\x01r", b"body", b"\x01s"],
                       [p.VERSION, p.REQUEST, b"\x01r\x01\x00\xc1", b""]):
            dealer.send_multipart(frames)
        # the two envelopes with a readable rid (an odd REQUEST, a bad route) each get an
        # error, possibly together in one REPLIES message
        answers = []
        while len(answers) < 2 and dealer.poll(2000):
            answers += p.parse_client_replies(dealer.recv_multipart())
        assert [(command, rid, p.parse_error_info(info)[0])
                for command, rid, info, _b in answers] == [(p.ERROR, b"r", "protocol_error")] * 2
    finally:
        dealer.close()
    status, _h, _b = shared_server.predict("echo", b"{}")
    assert status == 200


# ---------------------------------------------------------------------- the CLI

def test_stop_leaves_no_process_behind(make_server):
    server = make_server({"echo": "echo"}, "--workers", "2", "--frontends", "2")
    assert len(processes_mentioning(server.run_dir)) >= 5  # broker, 2 workers, 2 front ends
    result = server.stop()
    assert result.returncode == 0, result.stderr
    assert processes_mentioning(server.run_dir) == []
    assert not os.path.exists(os.path.join(server.run_dir, "broker.pid"))
    again = server.stop()
    assert again.returncode == 1 and "no server is running" in again.stderr


def test_workers_get_round_robin_gpu_ids(make_server):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1,2")
    server = make_server({"echo": "echo"}, "--workers", "3", "--number-of-gpu", "2",
                         "--frontends", "0", env=env)
    server.wait_for(lambda: len(server.workers("echo")) == 3, what="three workers")
    gpus = sorted(w["gpu"] for w in server.workers("echo"))
    assert gpus == [0, 0, 1]


def test_cli_rejects_a_bad_flag():
    result = cli("start", "--batch-size", "many")
    assert result.returncode == 2 and "--batch-size" in result.stderr


def test_cli_rejects_a_read_timeout_that_is_not_positive(tmp_path):
    result = cli("start", "--run-dir", str(tmp_path), "--model-store",
                 os.path.join(ROOT, "tests", "models"), "--models", "echo=echo",
                 "--request-read-timeout", "0")
    assert result.returncode == 2 and "request_read_timeout_s" in result.stderr


def test_request_read_timeout_reaches_the_front_ends(make_server):
    """`--request-read-timeout 1`: a client that stops in the middle of its body is answered
    408 and closed, by the front ends the CLI started; the server serves on."""
    server = make_server({"echo": "echo"}, "--request-read-timeout", "1", "--frontends", "2")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 10\r\n\r\nabc")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 408 Request Timeout")
    assert json_body(received.partition(b"\r\n\r\n")[2])["type"] == "RequestTimeout"
    status, _h, body = server.predict("echo", b"fine", "application/octet-stream")
    assert (status, body) == (200, b"fine")


def test_cli_rejects_a_missing_model(tmp_path):
    result = cli("start", "--run-dir", str(tmp_path), "--models", f"ghost={tmp_path}/ghost")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_cli_rejects_a_bad_batch_setting(tmp_path):
    result = cli("start", "--run-dir", str(tmp_path), "--model-store",
                 os.path.join(ROOT, "tests", "models"), "--models", "echo=echo",
                 "--batch-size", "10", "--max-queue", "5")
    assert result.returncode == 2 and "max_queue" in result.stderr


def test_cli_reports_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("start", "--run-dir", str(tmp_path), "--http-port", str(port),
                     "--client-address", f"tcp://127.0.0.1:{free_port()}",
                     "--model-store", os.path.join(ROOT, "tests", "models"),
                     "--models", "echo=echo")
    assert result.returncode != 0
    assert "Address already in use" in result.stderr or "in use" in result.stderr
    assert processes_mentioning(str(tmp_path)) == []


def test_two_front_ends_share_the_port(shared_server):
    # The shared server runs two front-end processes on one inherited socket; every fresh
    # connection is answered, whichever process accepts it.
    statuses = set()
    lock = threading.Lock()

    def ping():
        status, _h, _b = shared_server.http("GET", "/ping")
        with lock:
            statuses.add(status)

    in_parallel([ping for _ in range(16)])
    assert statuses == {200}


def test_sigstopped_worker_is_declared_lost_and_replaced(shared_server):
    (worker,) = shared_server.workers("slow")
    with shared_server.client() as client:
        pending = [client.submit("slow", {"sleep_ms": 200, "tag": f"s{i}"}, timeout_ms=20_000)
                   for i in range(4)]
        wait_busy(shared_server, "slow")
        os.kill(worker["pid"], signal.SIGSTOP)  # alive but silent: only heartbeats can tell
        try:
            stopped = time.monotonic()
            for handle in pending:
                with pytest.raises(WorkerLost):
                    handle.result()
            silent_s = time.monotonic() - stopped
            assert 2.0 < silent_s < 6.0, f"declared lost after {silent_s:.1f} s"
        finally:
            try:
                os.kill(worker["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    shared_server.wait_for(
        lambda: [w for w in shared_server.workers("slow") if w["pid"] != worker["pid"]],
        what="a replacement worker")
    status, _h, body = shared_server.predict("slow", slow_body(0, "after-stop"))
    assert status == 200, body


def test_a_handler_that_does_not_import_is_reported_and_the_rest_is_served(make_server,
                                                                          tmp_path):
    broken = tmp_path / "broken"
    (broken / "MAR-INF").mkdir(parents=True)
    (broken / "broken_handler.py").write_text("import module_that_does_not_exist\n")
    (broken / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"runtime": "python", "model": {"modelName": "broken", "modelVersion": "1.0",
                                        "handler": "broken_handler.py"}}))
    server = make_server({"echo": "echo", "broken": str(broken)})
    assert "broken" in server.start_output and "module_that_does_not_exist" in \
        server.start_output
    status, _h, body = server.predict("echo", b'{"ok": 1}')
    assert (status, json_body(body)) == (200, {"ok": 1})
    started = time.monotonic()
    status, _h, body = server.predict("broken", b"{}")
    assert status == 503 and time.monotonic() - started < 1.0
    error = json_body(body)
    assert error["type"] == "ServiceUnavailableException"
    assert "module_that_does_not_exist" in error["message"]
