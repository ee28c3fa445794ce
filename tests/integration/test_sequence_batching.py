"""Sequence batching over HTTP (broker/sequences.py): a stateful handler shaped as
pytorch/serve's examples/stateful (tests/torchserve/handlers/stateful_handler.py, a running sum
per sequence id in the handler), packed by the real torch-model-archiver with the sequence
keys in its model-config.yaml, served by 2 workers with batchSize 4.

- `stateful`: idle time 60 s; its answers to a two-sequence exchange are compared with
  TorchServe 0.12.0's (tests/torchserve/record_sequences.py; status and body: the sequence ids
  TorchServe makes are random, and it sends no Content-Type for the handler's integers).
- `brief`: the same with sequenceMaxIdleMSec 300, for expiry.
- `lone`: one worker, whose loss takes its sequences' state with it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.torchserve_answers import assert_same_answer, body, load
from tests.torchserve import record_sequences as recorded_case

pytestmark = pytest.mark.integration

pytest.importorskip("torch")

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ID = "ts_request_sequence_id"
END = "ts_request_sequence_end"
#: TorchServe's 503 for a sequence it cannot take (its ApiUtils), which zerobatch answers
REFUSED = b"If this is a sequence inference, please check if it is closed, or expired"
BRIEF_IDLE_MS = 300
BRIEF_CONFIG = f"""
    minWorkers: 1
    batchSize: 4
    sequenceMaxIdleMSec: {BRIEF_IDLE_MS}
    sequenceBatching: true
"""

LONE_CONFIG = """
    minWorkers: 1
    batchSize: 2
    sequenceMaxIdleMSec: 60000
    sequenceBatching: true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.servers import finish, start_server

    export = str(tmp_path_factory.mktemp("export"))
    archives = {
        "stateful": os.path.join(export, recorded_case.build_archive(export, REAL_ARCHIVER)),
        "brief": os.path.join(export, recorded_case.build_archive(
            export, REAL_ARCHIVER, "brief", BRIEF_CONFIG)),
        "lone": os.path.join(export, recorded_case.build_archive(
            export, REAL_ARCHIVER, "lone", LONE_CONFIG)),
        "echo": "echo",
    }
    started = start_server(archives)
    yield started
    finish(started)


def post(server, model: str, value: int | bytes, headers: dict | None = None):
    """(status, {lowercase header: value}, body) of one prediction."""
    data = value if isinstance(value, bytes) else str(value).encode()
    status, answer_headers, answer = server.http("POST", f"/predictions/{model}", data,
                                                 headers or {})
    return status, {k.lower(): v for k, v in answer_headers.items()}, answer


def test_concurrent_sequences_each_get_their_own_running_sums_in_order(server):
    def one_sequence(index: int) -> list[tuple[int, str, bytes]]:
        sequence_id = f"concurrent_{index}"
        answers = []
        for value in range(1, 6):
            headers = {ID: sequence_id}
            if value == 5:  # at most max(maxNumSequence, batchSize x maxWorkers) stay open
                headers[END] = "true"
            status, headers, answer = post(server, "stateful", value * (index + 1), headers)
            answers.append((status, headers.get(ID), answer))
        return answers

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one_sequence, range(6)))
    for index, answers in enumerate(results):
        sums = [str(sum(range(1, n + 1)) * (index + 1)).encode() for n in range(1, 6)]
        assert answers == [(200, f"concurrent_{index}", total) for total in sums]


def test_a_request_without_an_id_starts_a_sequence_whose_id_comes_back(server):
    status, headers, answer = post(server, "stateful", 5)
    assert (status, answer) == (200, b"5")
    sequence_id = headers[ID]
    assert sequence_id.startswith("ts-seq-")
    status, headers, answer = post(server, "stateful", 2, {ID: sequence_id, END: "true"})
    assert (status, headers[ID], answer) == (200, sequence_id, b"7")
    status, headers, answer = post(server, "stateful", 3)
    assert (status, answer) == (200, b"3") and headers[ID] not in (sequence_id, None)
    post(server, "stateful", 0, {ID: headers[ID], END: "true"})


def test_an_ended_sequence_is_gone(server):
    named = {ID: "to-be-ended"}
    assert post(server, "stateful", 1, named)[2] == b"1"
    ending = {**named, END: "true"}
    assert post(server, "stateful", 2, ending)[2] == b"3"
    status, _headers, answer = post(server, "stateful", 4, named)
    assert status == 503 and REFUSED in answer


def test_an_idle_sequence_expires_and_is_refused(server):
    status, headers, _answer = post(server, "brief", 1)
    assert status == 200
    named = {ID: headers[ID]}
    assert post(server, "brief", 1, named)[2] == b"2"  # alive while used
    time.sleep(3 * BRIEF_IDLE_MS / 1000)  # the idle time is what is tested
    status, _headers, answer = post(server, "brief", 1, named)
    assert status == 503 and REFUSED in answer
    status, _headers, answer = post(server, "brief", 1)  # a new one starts afresh
    assert (status, answer) == (200, b"1")


def test_other_models_are_untouched(server):
    status, headers, answer = post(server, "echo", b"hello", {ID: "seq_0"})
    assert (status, answer) == (200, b"hello")
    assert ID not in headers


def test_answers_match_torchserves(server):
    stored = load("sequences")
    for case in recorded_case.EXCHANGE:
        recorded = stored[case]
        status, headers, answer = post(server, "stateful", body(recorded["request"]),
                                       recorded["request"]["headers"])
        assert_same_answer(status, headers, answer, recorded, header_names=())
    recorded = stored[recorded_case.UNNAMED[0]]
    status, headers, answer = post(server, "stateful", body(recorded["request"]))
    assert_same_answer(status, headers, answer, recorded, header_names=())
    # TorchServe leaves answering the id to the handler; zerobatch answers it as a header
    assert ID not in recorded["headers"] and headers[ID].startswith("ts-seq-")


def test_a_sequence_whose_worker_died_is_refused(server):
    status, headers, _answer = post(server, "lone", 1)
    named = {ID: headers[ID]}
    assert post(server, "lone", 1, named)[:3:2] == (200, b"2")
    (worker,) = server.workers("lone")
    os.kill(worker["pid"], signal.SIGKILL)
    server.wait_for(lambda: all(w["pid"] != worker["pid"] for w in server.workers("lone")),
                    what="the broker to notice the lost worker")
    status, _headers, answer = post(server, "lone", 1, named)
    assert status == 500 and b"Worker died." in answer  # TorchServe's words for WorkerLost
    server.wait_for(lambda: server.workers("lone"), timeout_s=60, what="a new worker")
    status, headers, answer = post(server, "lone", 5)  # a new sequence, on the new worker
    assert (status, answer) == (200, b"5") and headers[ID] != named[ID]
