"""A real TorchServe `config.properties`, end to end: `zerobatch start --ts-config` serves the
models it names with the settings it gives (the TS_* variables and the flags over it), and the
`zerobatch-torchserve` console script takes TorchServe's own command line, `--start ...` and
`--stop`. The archives are .mar files made by `zerobatch archive` from the test models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.support.servers import (
    TEST_MODELS,
    Server,
    cli,
    finish,
    free_port,
    isolated_flags,
    json_body,
    processes_mentioning,
)
from zerobatch.api import cli as zerobatch_cli
from zerobatch.config import ServerConfig

pytestmark = pytest.mark.integration

TORCHSERVE = os.path.join(os.path.dirname(sys.executable), "zerobatch-torchserve")
HANDLERS = {"echo": "echo_handler.py", "batch_size_reporter": "batch_size_reporter_handler.py"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store of echo.mar and batch_size_reporter.mar."""
    path = tmp_path_factory.mktemp("store")
    for name, handler in HANDLERS.items():
        assert zerobatch_cli.main(["archive", "--model-name", name, "--version", "1.0",
                                   "--handler", os.path.join(TEST_MODELS, name, handler),
                                   "--export-path", str(path)]) == 0
    return str(path)


@pytest.fixture
def server(request):
    """A Server on free ports and its own run directory, stopped (and its processes killed)
    in a finalizer whatever the test does; the test starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    made = Server(run_dir=tempfile.mkdtemp(prefix="zb"), http_port=free_port(),
                  client_address=f"tcp://127.0.0.1:{free_port()}", env=env)
    request.addfinalizer(lambda: finish(made))
    return made


def served_config(run_dir: str) -> ServerConfig:
    """The ServerConfig the running broker was given (its `--config` argument)."""
    for pid in processes_mentioning(run_dir):
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().decode().split("\0")
        if "zerobatch.broker" in argv and "--config" in argv:
            return ServerConfig.from_json(argv[argv.index("--config") + 1])
    raise AssertionError(f"no broker runs from {run_dir}")


def describe(server: Server) -> dict[str, dict]:
    return {m["modelName"]: m for m in server.describe()["models"]}


def test_start_serves_what_config_properties_says(store, server, tmp_path):
    properties = tmp_path / "config.properties"
    properties.write_text(f"""\
# written as TorchServe reads it: separators, a continued JSON value, an unknown key
inference_address=http://127.0.0.1:{server.http_port}
management_address : http://127.0.0.1:{free_port()}
model_store={store}
load_models=echo.mar, reporter=batch_size_reporter.mar
enable_envvars_config=true
job_queue_size=7
default_response_timeout=60
max_response_size=4096
models={{\\
  "reporter": {{"1.0": {{"defaultVersion": true, "marName": "batch_size_reporter.mar",\\
                         "minWorkers": 2, "maxWorkers": 2, "batchSize": 4,\\
                         "maxBatchDelay": 200, "responseTimeout": 90}}}}\\
}}
number_of_netty_threads=4
colour=blue
""")
    server.env["TS_JOB_QUEUE_SIZE"] = "9"  # the environment over the file
    result = cli("start", "--ts-config", str(properties), "--run-dir", server.run_dir,
                 "--client-address", server.client_address, "--startup-timeout", "60",
                 "--response-timeout", "30",  # the flag over the file
                 *isolated_flags(), env=server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{properties}: number_of_netty_threads: a TorchServe setting" in result.stderr
    assert f"{properties}: colour: unknown key; ignored" in result.stderr

    # served on the file's inference_address, the models of its load_models
    assert server.http("GET", "/ping")[0] == 200
    status, _, body = server.predict("echo", b'{"hello": 1}')
    assert status == 200 and json_body(body) == {"hello": 1}
    status, _, body = server.predict("reporter", b'"x"')
    assert status == 200 and json_body(body)["body"] == "x"

    # with the models JSON's settings for its model, the global ones for the other
    models = describe(server)
    assert (models["reporter"]["batchSize"], models["reporter"]["maxBatchDelay"]) == (4, 200)
    assert len(models["reporter"]["workers"]) == 2
    assert (models["echo"]["batchSize"], models["echo"]["maxBatchDelay"]) == (1, 100)
    assert len(models["echo"]["workers"]) == 1

    config = served_config(server.run_dir)
    by_name = {m.name: m for m in config.models}
    assert by_name["echo"].max_queue == by_name["reporter"].max_queue == 9
    assert by_name["echo"].response_timeout_s == 30
    assert by_name["reporter"].response_timeout_s == 90  # the model's own beats the flag
    assert config.max_response_bytes == 4096 and config.http_port == server.http_port


def test_torchserve_command_line_starts_and_stops(store, server, tmp_path):
    if not os.path.exists(TORCHSERVE):
        pytest.fail(f"{TORCHSERVE} is missing: run `pip install --no-build-isolation "
                    "--no-deps -e .` to install the console script")
    properties = tmp_path / "config.properties"
    properties.write_text(f"inference_address=http://127.0.0.1:{server.http_port}\n"
                          f"management_address=http://127.0.0.1:{free_port()}\n"
                          f"metrics_address=http://127.0.0.1:{free_port()}\n"
                          "default_workers_per_model=2\n")

    def torchserve(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([TORCHSERVE, *argv], cwd=tmp_path, env=server.env,
                              capture_output=True, text=True, timeout=150)

    started = torchserve("--start", "--ts-config", str(properties), "--model-store", store,
                         "--models", "echo=echo.mar", "--ncs", "--disable-token-auth",
                         "--plugins-path", "/opt/plugins", "--some-future-flag",
                         "--run-dir", server.run_dir, "--client-address",
                         server.client_address)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "ignoring what TorchServe's command line does not have either: --some-future-flag" \
        in started.stderr
    assert "ignoring --plugins-path" in started.stderr
    status, _, body = server.predict("echo", b'{"from": "torchserve"}')
    assert status == 200 and json_body(body) == {"from": "torchserve"}
    assert len(describe(server)["echo"]["workers"]) == 2  # default_workers_per_model
    config = served_config(server.run_dir)
    assert config.disable_token_authorization and not config.config_snapshots

    stopped = torchserve("--stop", "--run-dir", server.run_dir)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert zerobatch_cli.running_pid(server.run_dir) is None
    server.wait_for(lambda: not processes_mentioning(server.run_dir), timeout_s=30,
                    what="every process of the server to exit")
    again = torchserve("--stop", "--run-dir", server.run_dir)
    assert again.returncode == 0 and "no server is running" in again.stdout


def test_torchserve_runs_models_all_from_its_config_file(store, server, tmp_path):
    """A container entrypoint's usual line: no --ts-config (TorchServe then reads the current
    directory's config.properties), everything from the file, `load_models=all`."""
    properties = tmp_path / "config.properties"
    properties.write_text(f"inference_address=http://127.0.0.1:{server.http_port}\n"
                          f"model_store={store}\nload_models=all\n"
                          f"management_address=http://127.0.0.1:{free_port()}\n"
                          f"metrics_address=http://127.0.0.1:{free_port()}\n"
                          "disable_token_authorization=true\n")
    started = subprocess.run(
        [TORCHSERVE, "--start", "--ncs", "--run-dir", server.run_dir,
         "--client-address", server.client_address],
        cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=150)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "reading" in started.stderr and "config.properties" in started.stderr
    assert sorted(describe(server)) == ["batch_size_reporter", "echo"]
    assert json.loads(server.predict("echo", b"[1]")[2]) == [1]
