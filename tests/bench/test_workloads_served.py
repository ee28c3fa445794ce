"""The benchmark workloads served by a real zerobatch: the .mar files built by the real
torch-model-archiver (and one model directory, the no-archive form) answer over HTTP and over
ZeroMQ with what the handlers promise."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.workloads import NAMES, build
from tests.support.servers import finish, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workloads(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("workloads")
    return {name: build(name, str(out_dir)) for name in NAMES}


@pytest.fixture(scope="module")
def server(workloads):
    models = {name: workload.archive for name, workload in workloads.items()}
    models["sleep_dir"] = workloads["sleep"].model_dir
    server = start_server(models, "--batch-size", "8", "--max-batch-delay", "5")
    yield server
    finish(server)


def post(server, workload, model=None):
    return server.predict(model or workload.name, workload.payload,
                          content_type=workload.content_type)


def test_echo_answers_the_body_over_http(server, workloads):
    status, headers, body = post(server, workloads["echo"])
    assert status == 200 and body == workloads["echo"].payload
    # the handler sets no content type: none, as TorchServe sends none
    assert "content-type" not in {k.lower() for k in headers}


def test_mlp_answers_ten_probabilities_over_http(server, workloads):
    status, _, body = post(server, workloads["mlp"])
    assert status == 200
    probabilities = json.loads(body)
    assert len(probabilities) == 10 and math.isclose(sum(probabilities), 1.0, rel_tol=1e-5)


def test_mlp_refuses_a_wrong_body_and_lives_on(server, workloads):
    status, _, _ = server.predict("mlp", b"short", content_type="application/octet-stream")
    assert status >= 400
    assert post(server, workloads["mlp"])[0] == 200


def test_sleep_answers_ok_from_the_archive_and_from_the_model_directory(server, workloads):
    for model in ("sleep", "sleep_dir"):
        status, _, body = post(server, workloads["sleep"], model)
        assert (status, body) == (200, b"ok"), model


def test_a_full_batch_of_each_workload_over_zeromq(server, workloads):
    with server.client() as client:
        for name, workload in workloads.items():
            pending = [client.submit(name, workload.payload, timeout_ms=30_000)
                       for _ in range(8)]
            bodies = [p.result().body for p in pending]
            if name == "mlp":
                assert all(len(json.loads(body)) == 10 for body in bodies)
            else:
                assert bodies == [workload.payload if name == "echo" else b"ok"] * 8
