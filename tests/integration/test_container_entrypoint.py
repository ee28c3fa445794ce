"""The container's entrypoint (`python -m zerobatch.container`), run outside a container (no
container builder works here, see docs/deploy.md) on a temporary directory laid out as KServe
lays out a model: `config/config.properties` as KServe's TorchServe examples write it (with
loopback addresses on free ports instead of 0.0.0.0) and `model-store/echo.mar`. It serves,
answers /ping, a prediction and /metrics, stops cleanly on SIGTERM, and a wrong layout fails
with one line naming what is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.support.http_request import http_request
from tests.support.servers import ROOT, TEST_MODELS, free_port, processes_mentioning
from zerobatch.api import cli as zerobatch_cli

pytestmark = pytest.mark.integration

#: how long the server may take to answer /ping, and to exit after SIGTERM (the drain is
#: 3 s for batches plus 5 s before children are killed)
START_LIMIT_S = 60.0
STOP_LIMIT_S = 20.0


def entrypoint(*args: str, env: dict[str, str], stderr) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zerobatch.container", *args], cwd=ROOT,
                            env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                            start_new_session=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TS_", "ZEROBATCH_MODEL", "ZEROBATCH_TS"))}
    env.update(extra)
    return env


def kserve_properties(http_port: int, management_port: int, metrics_port: int) -> str:
    """KServe's TorchServe config.properties (its docs' example), on loopback ports."""
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {"echo": {"1.0": {
        "defaultVersion": True, "marName": "echo.mar", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 1, "maxBatchDelay": 10, "responseTimeout": 120}}}}
    return f"""\
inference_address=http://127.0.0.1:{http_port}
management_address=http://127.0.0.1:{management_port}
metrics_address=http://127.0.0.1:{metrics_port}
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=false
disable_token_authorization=true
model_store=/mnt/models/model-store
model_snapshot={json.dumps(snapshot)}
"""


@pytest.fixture
def layout(tmp_path):
    """A KServe model directory: config/config.properties and model-store/echo.mar."""
    store = tmp_path / "model-store"
    store.mkdir()
    assert zerobatch_cli.main(["archive", "--model-name", "echo", "--version", "1.0",
                               "--handler", os.path.join(TEST_MODELS, "echo", "echo_handler.py"),
                               "--export-path", str(store)]) == 0
    (tmp_path / "config").mkdir()
    return tmp_path


@pytest.fixture
def started(request):
    """Processes started by a test and their run directories: all killed in a finalizer."""
    processes: list[subprocess.Popen] = []
    run_dirs: list[str] = []

    def cleanup() -> None:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for run_dir in run_dirs:
            for pid in processes_mentioning(run_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(run_dir, ignore_errors=True)

    request.addfinalizer(cleanup)
    return processes, run_dirs


def wait_for_ping(port: int, process: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the entrypoint exited ({process.returncode}):\n"
                                 f"{read(log_path)}")
        try:
            status, _, body = http_request(port, "GET", "/ping", timeout_s=2)
            if status == 200 and json.loads(body) == {"status": "Healthy"}:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /ping after {START_LIMIT_S} s:\n{read(log_path)}")


def read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def test_serves_kserve_layout_and_stops_on_sigterm(layout, started, tmp_path):
    processes, run_dirs = started
    http_port, management_port, metrics_port = free_port(), free_port(), free_port()
    (layout / "config" / "config.properties").write_text(
        kserve_properties(http_port, management_port, metrics_port))
    run_dir = tempfile.mkdtemp(prefix="zb")
    run_dirs.append(run_dir)
    log_path = str(tmp_path / "entrypoint.log")
    with open(log_path, "wb") as log:
        process = entrypoint("--run-dir", run_dir, "--client-address",
                             f"tcp://127.0.0.1:{free_port()}",
                             env=clean_env(ZEROBATCH_MODEL_DIR=str(layout)), stderr=log)
    processes.append(process)
    wait_for_ping(http_port, process, log_path)

    status, _, body = http_request(http_port, "POST", "/predictions/echo", b'{"x": 1}',
                                   {"Content-Type": "application/json"})
    assert status == 200, body
    assert json.loads(body) == {"x": 1}
    status, _, body = http_request(http_port, "GET", "/ready")
    assert status == 200, body
    status, _, body = http_request(metrics_port, "GET", "/metrics")
    assert status == 200
    assert b"zerobatch_queue_depth{" in body
    assert "inference API to 127.0.0.1" in read(log_path)  # the loopback warning

    os.kill(process.pid, signal.SIGTERM)  # the entrypoint's pid: it exec'd the broker
    assert process.wait(STOP_LIMIT_S) == 0, read(log_path)
    assert "Traceback" not in read(log_path)
    deadline = time.monotonic() + STOP_LIMIT_S
    while processes_mentioning(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(run_dir) == []


def run_to_exit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerobatch.container", *args], cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zerobatch-container: error: ")
    return lines[0]


def test_missing_config_properties_is_one_line(tmp_path):
    (tmp_path / "model-store").mkdir()
    line = one_error_line(run_to_exit("--model-dir", str(tmp_path), env=clean_env()))
    assert f"no config.properties at {tmp_path}/config/config.properties" in line


def test_missing_model_store_is_one_line(layout, tmp_path):
    (layout / "config" / "config.properties").write_text("load_models=all\n")
    shutil.rmtree(layout / "model-store")
    line = one_error_line(run_to_exit(env=clean_env(ZEROBATCH_MODEL_DIR=str(layout))))
    assert f"no model store directory at {layout}/model-store" in line


def test_empty_model_store_is_one_line(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.properties").write_text("load_models=all\n")
    (tmp_path / "store").mkdir()
    line = one_error_line(run_to_exit(
        "--ts-config", str(tmp_path / "config" / "config.properties"),
        env=clean_env(ZEROBATCH_MODEL_STORE=str(tmp_path / "store"))))
    assert f"no model in the model store {tmp_path}/store" in line
