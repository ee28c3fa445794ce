"""Sequence batching over HTTP (broker/sequences.py): a stateful handler shaped as
pytorch/serve's examples/stateful (tests/torchserve/handlers/stateful_handler.py, a running sum
per sequence id in the handler; a request with `ts_request_sequence_end` makes it forget the
sum), packed by the real torch-model-archiver with the sequence keys in its model-config.yaml.

`server` answers as TorchServe 0.12 does (the default):
- `stateful` (2 workers, batchSize 4, idle 60 s) and `brief` (1 worker, idle 300 ms): the
  cases tests/torchserve/record_sequences.py recorded from TorchServe 0.12.0, replayed in the
  same order and compared: status, body, and the `ts_request_sequence_id` response header
  (TorchServe sends none; the handler here sets none). They cover the end header (the
  sequence goes on) and an expired id (a new sequence under it).
- `concurrent` (as `stateful`): six sequences at once, each on its own running sum.
- `lone` (1 worker): its loss takes the sequences' state with it; the id goes on, afresh.

`strict_server` runs with --zerobatch-answers: the answer carries the sequence id, and an
ended, expired or lost sequence's id is refused (in zerobatch's words, as that switch answers
every error).
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
BRIEF_IDLE_MS = recorded_case.BRIEF_IDLE_MS

LONE_CONFIG = """
    minWorkers: 1
    batchSize: 2
    sequenceMaxIdleMSec: 60000
    sequenceBatching: true
"""


def archives_in(export: str, models: dict[str, str]) -> dict[str, str]:
    """name -> archive path, each built with the stateful handler and its model-config."""
    return {name: os.path.join(export, recorded_case.build_archive(export, REAL_ARCHIVER, name,
                                                                   config))
            for name, config in models.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.servers import finish, start_server

    archives = archives_in(str(tmp_path_factory.mktemp("export")), {
        recorded_case.MODEL_NAME: recorded_case.MODEL_CONFIG,
        recorded_case.BRIEF_MODEL: recorded_case.BRIEF_CONFIG,
        "concurrent": recorded_case.MODEL_CONFIG,
        "lone": LONE_CONFIG,
    })
    started = start_server({**archives, "echo": "echo"})
    yield started
    finish(started)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    from tests.support.servers import finish, start_server

    archives = archives_in(str(tmp_path_factory.mktemp("export")), {
        recorded_case.BRIEF_MODEL: recorded_case.BRIEF_CONFIG,
        "lone": LONE_CONFIG,
    })
    started = start_server(archives, "--zerobatch-answers")
    yield started
    finish(started)


def post(server, model: str, value: int | bytes, headers: dict | None = None):
    """(status, {lowercase header: value}, body) of one prediction."""
    data = value if isinstance(value, bytes) else str(value).encode()
    status, answer_headers, answer = server.http("POST", f"/predictions/{model}", data,
                                                 headers or {})
    return status, {k.lower(): v for k, v in answer_headers.items()}, answer


def kill_the_worker(server, model: str) -> None:
    """SIGKILL the model's one worker, and wait until the broker has noticed."""
    (worker,) = server.workers(model)
    os.kill(worker["pid"], signal.SIGKILL)
    server.wait_for(lambda: all(w["pid"] != worker["pid"] for w in server.workers(model)),
                    what="the broker to notice the lost worker")


# ---------------------------------------------------------------------- TorchServe's answers


def test_answers_match_torchserves(server):
    stored = load("sequences")
    model = recorded_case.MODEL_NAME

    def replay(model: str, case: str) -> None:
        recorded = stored[case]
        status, headers, answer = post(server, model, body(recorded["request"]),
                                       recorded["request"]["headers"])
        assert_same_answer(status, headers, answer, recorded, header_names=(ID, "content-type"))

    for case in [*recorded_case.EXCHANGE, recorded_case.UNNAMED[0], *recorded_case.ENDING]:
        replay(model, case)
    for case in recorded_case.EXPIRY_BEFORE:
        replay(recorded_case.BRIEF_MODEL, case)
    time.sleep(recorded_case.EXPIRY_PAUSE_S)  # past sequenceMaxIdleMSec: what is tested
    for case in recorded_case.EXPIRY_AFTER:
        replay(recorded_case.BRIEF_MODEL, case)


def test_concurrent_sequences_each_get_their_own_running_sums_in_order(server):
    def one_sequence(index: int) -> list[tuple[int, str | None, bytes]]:
        sequence_id = f"concurrent_{index}"
        answers = []
        for value in range(1, 6):
            status, headers, answer = post(server, "concurrent", value * (index + 1),
                                           {ID: sequence_id})
            answers.append((status, headers.get(ID), answer))
        return answers

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one_sequence, range(6)))
    for index, answers in enumerate(results):
        sums = [str(sum(range(1, n + 1)) * (index + 1)).encode() for n in range(1, 6)]
        assert answers == [(200, None, total) for total in sums]


def test_a_request_without_an_id_gets_no_id_back(server):
    status, headers, answer = post(server, "concurrent", 5)
    assert (status, answer) == (200, b"5") and ID not in headers


def test_a_sequence_whose_worker_died_goes_on_afresh_on_the_new_worker(server):
    named = {ID: "lone_0"}
    assert post(server, "lone", 1, named)[:3:2] == (200, b"1")
    assert post(server, "lone", 1, named)[:3:2] == (200, b"2")
    kill_the_worker(server, "lone")
    server.wait_for(lambda: server.workers("lone"), timeout_s=60, what="a new worker")
    status, headers, answer = post(server, "lone", 1, named)
    assert (status, answer) == (200, b"1") and ID not in headers  # the sum died with it


def test_other_models_are_untouched(server):
    status, headers, answer = post(server, "echo", b"hello", {ID: "seq_0"})
    assert (status, answer) == (200, b"hello")
    assert ID not in headers


# ---------------------------------------------------------------------- --zerobatch-answers


def test_strict_a_request_without_an_id_starts_a_sequence_whose_id_comes_back(strict_server):
    model = recorded_case.BRIEF_MODEL
    status, headers, answer = post(strict_server, model, 5)
    assert (status, answer) == (200, b"5")
    sequence_id = headers[ID]
    assert sequence_id.startswith("ts-seq-")
    status, headers, answer = post(strict_server, model, 2, {ID: sequence_id, END: "true"})
    assert (status, headers[ID], answer) == (200, sequence_id, b"7")
    status, headers, answer = post(strict_server, model, 3)
    assert (status, answer) == (200, b"3") and headers[ID] not in (sequence_id, None)


def test_strict_an_ended_sequence_is_gone(strict_server):
    model = recorded_case.BRIEF_MODEL
    named = {ID: "to-be-ended"}
    assert post(strict_server, model, 1, named)[2] == b"1"
    assert post(strict_server, model, 2, {**named, END: "true"})[2] == b"3"
    status, _headers, answer = post(strict_server, model, 4, named)
    assert status == 503 and b'"QueueFull"' in answer and b"has ended" in answer


def test_strict_an_idle_sequence_expires_and_is_refused(strict_server):
    model = recorded_case.BRIEF_MODEL
    status, headers, _answer = post(strict_server, model, 1)
    assert status == 200
    named = {ID: headers[ID]}
    assert post(strict_server, model, 1, named)[2] == b"2"  # alive while used
    time.sleep(3 * BRIEF_IDLE_MS / 1000)  # the idle time is what is tested
    status, _headers, answer = post(strict_server, model, 1, named)
    assert status == 503 and b'"QueueFull"' in answer and b"has expired" in answer
    status, _headers, answer = post(strict_server, model, 1)  # a new one starts afresh
    assert (status, answer) == (200, b"1")


def test_strict_a_sequence_whose_worker_died_is_refused(strict_server):
    status, headers, _answer = post(strict_server, "lone", 1)
    named = {ID: headers[ID]}
    assert post(strict_server, "lone", 1, named)[:3:2] == (200, b"2")
    kill_the_worker(strict_server, "lone")
    status, _headers, answer = post(strict_server, "lone", 1, named)
    assert status == 503 and b'"WorkerLost"' in answer and b"the worker that held it" in answer
    strict_server.wait_for(lambda: strict_server.workers("lone"), timeout_s=60,
                           what="a new worker")
    status, headers, answer = post(strict_server, "lone", 5)  # a new sequence, a new worker
    assert (status, answer) == (200, b"5") and headers[ID] != named[ID]
