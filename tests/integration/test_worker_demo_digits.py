"""The demo model served by a real worker process (its handler and training:
tests/unit/test_demo_digits.py)."""

import json
import signal
import subprocess

import pytest

from tests.support.demo import SAMPLE, demo_model_dir
from tests.support.fake_worker_broker import item
from zerobatch.config import ModelConfig, WorkerConfig
from zerobatch.launch import module_argv

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return demo_model_dir(tmp_path_factory)


def test_a_worker_process_serves_the_demo(model_dir, worker_broker, tmp_path):
    config = WorkerConfig("w-digits", worker_broker.address,
                          ModelConfig("digits", model_dir, batch_size=4))
    proc = subprocess.Popen(module_argv("zerobatch.worker", "--config", config.to_json()),
                            cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        identity, info = worker_broker.wait_ready(timeout_s=60)
        assert (info["model"], info["pid"]) == ("digits", proc.pid)
        with open(SAMPLE, "rb") as f:
            replies = worker_broker.request(identity, 1, [item(f.read(), "image/png")] * 2)
        for reply in replies:
            assert (reply.kind, reply.status) == ("reply", 200)
            probabilities = json.loads(reply.body)
            assert max(probabilities, key=probabilities.get) == "3"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
