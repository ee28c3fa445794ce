"""No process of ours imports from the caller's directory.

`python -m` puts the current directory first on sys.path, so a `zerobatch/` folder (the clone
itself, seen from its parent), a `worker.py` or an `api/` package where the user stands would
shadow the installed package in every child (zerobatch.launch). Here a server is started from
a directory holding all three, each raising on import, with its run directory `./zerobatch`
inside it, and must serve normally; and both launch argvs (3.11's `-P` and the 3.10 bootstrap)
run a module by its installed name from such a directory, where a plain `python -m` cannot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

import zerobatch
from tests.support.http_request import http_request
from tests.support.servers import TEST_MODELS, free_port, isolated_flags, processes_mentioning
from zerobatch import launch
from zerobatch.api.client import Client

pytestmark = pytest.mark.integration

SHADOW = 'raise ImportError("shadowed")\n'
#: the CLI next to this interpreter (the dev venv's, an editable install)
ZEROBATCH = os.path.join(os.path.dirname(sys.executable), "zerobatch")


@pytest.fixture
def hostile_dir():
    """A directory whose `zerobatch/`, `worker.py` and `api/` raise when imported; every
    process that names it is killed at the end."""
    path = tempfile.mkdtemp(prefix="zbh")  # short: the run directory holds ipc sockets
    os.mkdir(os.path.join(path, "zerobatch"))
    os.mkdir(os.path.join(path, "api"))
    for name in ("zerobatch/__init__.py", "worker.py", "api/__init__.py"):
        with open(os.path.join(path, name), "w") as handle:
            handle.write(SHADOW)
    yield path
    for pid in processes_mentioning(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def cli_in(cwd: str, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([ZEROBATCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def log_of(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "zerobatch.log"), errors="replace") as handle:
            return handle.read()[-4000:]
    except OSError:
        return "(no log)"


def test_a_server_started_from_a_hostile_directory_serves(hostile_dir):
    http_port = free_port()
    address = f"tcp://127.0.0.1:{free_port()}"
    run_dir = os.path.join(hostile_dir, "zerobatch")
    started = cli_in(hostile_dir, "start", "--run-dir", "./zerobatch",
                     "--http-port", str(http_port), "--client-address", address,
                     "--startup-timeout", "60", "--models", f"echo={TEST_MODELS}/echo",
                     *isolated_flags())
    assert started.returncode == 0, started.stdout + started.stderr + log_of(run_dir)
    assert os.path.isfile(os.path.join(run_dir, "broker.pid"))

    status, _headers, body = http_request(http_port, "POST", "/predictions/echo",
                                          b"from http", {"Content-Type": "text/plain"})
    assert (status, body) == (200, b"from http")
    with Client(address) as client:
        reply = client.predict("echo", b"over zeromq", timeout_ms=30_000)
    assert (reply.status, reply.body) == (200, b"over zeromq")

    stopped = cli_in(hostile_dir, "stop", "--run-dir", "./zerobatch")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert processes_mentioning(hostile_dir) == []
    assert "shadowed" not in log_of(run_dir)


@pytest.mark.parametrize("make_argv", [launch.module_argv, launch.bootstrap_argv],
                         ids=["module_argv", "bootstrap_argv"])
def test_a_launched_module_is_the_installed_one(hostile_dir, make_argv):
    result = subprocess.run(make_argv("zerobatch.api.cli", "--version"), cwd=hostile_dir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"zerobatch {zerobatch.__version__}"


def test_the_hostile_directory_shadows_a_plain_python_m(hostile_dir):
    """The control: without zerobatch.launch, the directory's `zerobatch/` wins."""
    result = subprocess.run([sys.executable, "-m", "zerobatch.api.cli", "--version"],
                            cwd=hostile_dir, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "shadowed" in result.stderr
