"""model-config.yaml and per-model dependencies end to end, with archives from the real
torch-model-archiver: the yaml's batchSize / maxBatchDelay / minWorkers decide the batching
and the worker count, a custom key reaches the handler; `-r requirements.txt` is installed with
--install-py-dep-per-model, not without it (the import error is logged while another model is
served), and a requirement pip cannot find refuses the model with pip's error in the log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.servers import (
    ROOT,
    TEST_MODELS,
    Server,
    free_port,
    isolated_flags,
    json_body,
)

pytestmark = pytest.mark.integration

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
REPORTER_HANDLER = os.path.join(TEST_MODELS, "batch_size_reporter",
                                "batch_size_reporter_handler.py")
#: a tiny pure-Python package from PyPI that the test venv does not have
DEP_PACKAGE, DEP_REQUIREMENT = "pyjokes", "pyjokes==0.6.0"

CUSTOM_KEY_HANDLER = '''
def handle(data, context):
    if data is None:
        return None
    greeting = context.model_yaml_config["handler"]["greeting"]
    return [{"greeting": greeting} for _ in data]
'''

DEP_HANDLER = f'''
import {DEP_PACKAGE}


def handle(data, context):
    return [{{"module": {DEP_PACKAGE}.__name__, "file": {DEP_PACKAGE}.__file__}}
            for _ in data or []]
'''


def archive(tmp_path, name: str, handler_source: str | None = None, *,
            config: str | None = None, requirements: str | None = None) -> str:
    """Build NAME.mar with the real torch-model-archiver; returns its path."""
    src = tmp_path / f"src-{name}"
    src.mkdir()
    handler = src / f"{name}_handler.py"
    if handler_source is None:
        shutil.copy(REPORTER_HANDLER, handler)
    else:
        handler.write_text(handler_source)
    argv = [REAL_ARCHIVER, "--model-name", name, "--version", "1.0", "--handler", str(handler),
            "--export-path", str(tmp_path)]
    if config is not None:
        (src / "model-config.yaml").write_text(config)
        argv += ["-c", str(src / "model-config.yaml")]
    if requirements is not None:
        (src / "requirements.txt").write_text(requirements)
        argv += ["-r", str(src / "requirements.txt")]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=src, timeout=60)
    assert result.returncode == 0, result.stderr
    return str(tmp_path / f"{name}.mar")


def log_text(server: Server) -> str:
    with open(os.path.join(server.run_dir, "zerobatch.log"), encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="module", autouse=True)
def dependency_not_installed():
    probe = subprocess.run([sys.executable, "-c", f"import {DEP_PACKAGE}"],
                           capture_output=True, cwd=ROOT)
    assert probe.returncode != 0, f"{DEP_PACKAGE} must not be installed in the test venv"


def test_yaml_settings_decide_batching_and_workers(make_server, tmp_path):
    reporter = archive(tmp_path, "yaml_reporter",
                       config="batchSize: 4\nmaxBatchDelay: 2000\nminWorkers: 2\n"
                              "handler:\n  greeting: hello\n")
    greeter = archive(tmp_path, "greeter", CUSTOM_KEY_HANDLER,
                      config="handler:\n  greeting: hello from yaml\n")
    # the CLI flags say batch size 1, one worker: the yaml wins for its model
    server = make_server({"reporter": reporter, "greeter": greeter}, "--batch-size", "1",
                         "--workers", "1", "--batch-policy", "full_delay")
    server.wait_for(lambda: len(server.workers("reporter")) == 2, what="2 reporter workers")
    assert len(server.workers("greeter")) == 1  # no minWorkers in its yaml: the CLI's 1
    described = {m["modelName"]: m for m in server.describe()["models"]}
    assert (described["reporter"]["batchSize"], described["reporter"]["maxBatchDelay"]) == (4,
                                                                                          2000)
    assert described["greeter"]["batchSize"] == 1

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: server.predict("reporter", json.dumps(i).encode()),
                                range(4)))
    assert [status for status, _h, _b in replies] == [200] * 4
    assert [json_body(body)["batch_size"] for _s, _h, body in replies] == [4] * 4

    status, _headers, body = server.predict("greeter", b"{}")
    assert (status, json_body(body)) == (200, {"greeting": "hello from yaml"})


def test_a_bad_yaml_value_refuses_only_that_model(make_server, tmp_path):
    good = archive(tmp_path, "good", config="batchSize: 2\n")
    bad = archive(tmp_path, "bad", config="batchSize: -3\n")
    server = make_server({"good": good, "bad": bad})
    assert server.predict("good", b"1")[0] == 200
    assert server.predict("bad", b"1")[0] == 404
    log = log_text(server)
    assert "model bad/1.0 refused" in log and "model-config.yaml: batchSize" in log


def pypi_reachable() -> bool:
    if os.environ.get("PIP_INDEX_URL"):
        return True
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not pypi_reachable(), reason="needs PyPI to install a requirement")
def test_requirements_are_installed_per_model_with_the_flag(make_server, tmp_path):
    jokes = archive(tmp_path, "jokes", DEP_HANDLER, requirements=DEP_REQUIREMENT + "\n")
    server = make_server({"jokes": jokes}, "--install-py-dep-per-model")
    status, _headers, body = server.predict("jokes", b"{}")
    assert status == 200, body
    reply = json_body(body)
    assert reply["module"] == DEP_PACKAGE
    assert reply["file"].startswith(os.path.join(server.run_dir, "deps", "jokes-1.0-"))
    probe = subprocess.run([sys.executable, "-c", f"import {DEP_PACKAGE}"],
                           capture_output=True, cwd=ROOT)
    assert probe.returncode != 0  # the server's own environment is untouched


def test_requirements_are_not_installed_without_the_flag(tmp_path):
    jokes = archive(tmp_path, "jokes", DEP_HANDLER, requirements=DEP_REQUIREMENT + "\n")
    with foreground_server({"jokes": jokes, "echo": "echo"}) as (server, log_path):
        status, _headers, body = server.predict("echo", b'{"ok": 1}')
        assert (status, json_body(body)) == (200, {"ok": 1})

        def import_error_logged():
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                return f"No module named '{DEP_PACKAGE}'" in handle.read()

        server.wait_for(import_error_logged, timeout_s=30, what="the import error in the log")
        assert server.workers("jokes") == []
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            assert "--install-py-dep-per-model" in handle.read()


def test_a_requirement_pip_cannot_find_refuses_the_model(make_server, tmp_path):
    missing = "zerobatch-no-such-package-7f3c91==1.0"
    broken = archive(tmp_path, "broken", DEP_HANDLER, requirements=missing + "\n")
    good = archive(tmp_path, "good")
    server = make_server({"broken": broken, "good": good}, "--install-py-dep-per-model")
    assert server.predict("good", b"1")[0] == 200
    assert server.predict("broken", b"1")[0] == 404
    log = log_text(server)
    assert "model broken/1.0 refused" in log and "pip install" in log
    assert "zerobatch-no-such-package-7f3c91" in log and "ERROR:" in log


# ---------------------------------------------------------------------- helpers

class foreground_server:
    """`zerobatch start --foreground` in a subprocess, for a server that `start` would never
    call ready (a model whose workers cannot load); ready when HTTP answers and `echo` has a
    worker. Stops it with SIGTERM and kills what is left."""

    def __init__(self, models: dict[str, str], *flags: str) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="zb")
        self.server = Server(run_dir=self.run_dir, http_port=free_port(),
                             client_address=f"tcp://127.0.0.1:{free_port()}")
        self.log_path = os.path.join(self.run_dir, "foreground.log")
        self.argv = [sys.executable, "-m", "zerobatch.api.cli", "start", "--foreground",
                     "--run-dir", self.run_dir, "--http-port", str(self.server.http_port),
                     "--client-address", self.server.client_address, "--model-store",
                     TEST_MODELS, "--models", *[f"{k}={v}" for k, v in models.items()], *flags,
                     *isolated_flags()]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> tuple[Server, str]:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=log_file, stderr=subprocess.STDOUT)
        try:
            self.server.wait_for(self._ready, timeout_s=60, what="the foreground server")
        except BaseException:
            self.__exit__()
            raise
        return self.server, self.log_path

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "the server exited"
        try:
            # HTTP answers: 200, or 500 "Unhealthy" while a model cannot load (its point here)
            return bool(self.server.workers("echo")) and \
                self.server.http("GET", "/ping")[0] in (200, 500)
        except Exception:  # not answering yet
            return False

    def __exit__(self, *_exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 5
        while self.server.kill_leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.run_dir, ignore_errors=True)
