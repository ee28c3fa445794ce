"""The peers (TorchServe, LitServe) install, serve the echo workload and leave nothing behind.

Each peer is installed into `.bench/venvs/<name>` (slow the first time, cached after), serves
the echo archive with batch size 4 and a 5 ms delay, and answers concurrent requests, each
with its own bytes, with exactly those bytes. After serve() returns, `ps` must show no process
left of the sessions the server ran in (launcher, JVM and Python workers included).
"""

from __future__ import annotations

import http.client
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.peers import ModelSettings, get_peer, venvs
from benchmarks.workloads import build

pytestmark = [pytest.mark.integration, pytest.mark.peers]

SETTINGS = ModelSettings(batch_size=4, max_batch_delay_ms=5, workers=1)
REQUESTS = 12
INSTALL_AND_RUN_TIMEOUT_S = 1500  # a first run creates the venvs (torch, the server)


@pytest.fixture(scope="module")
def echo_workload(tmp_path_factory):
    return build("echo", str(tmp_path_factory.mktemp("workloads")))


def venv_processes(venv_dir: str) -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of the live processes `ps` lists that run
    from venv_dir (a peer's launcher, JVM and workers all name it: its python, or
    -Dmodel_server_home inside it)."""
    listing = subprocess.run(["ps", "-eo", "pid=,ppid=,sid=,stat=,args="], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    found = {}
    for line in listing.splitlines():
        pid, ppid, sid, stat, args = line.strip().split(None, 4)
        if venv_dir in args and not stat.startswith("Z"):
            found[int(pid)] = (int(ppid), int(sid), args)
    return found


def post(target, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(target.host, target.port, timeout=30)
    try:
        connection.request("POST", target.path, body=body, headers=target.headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.timeout(INSTALL_AND_RUN_TIMEOUT_S)
@pytest.mark.parametrize("name", ["torchserve", "litserve"])
def test_peer_serves_echo_and_stops_everything(name, echo_workload):
    peer = get_peer(name)
    reason = peer.missing()
    if reason is not None:
        pytest.skip(reason)
    peer.install()
    assert peer.version()
    venv_dir = venvs.venv_dir(name)

    with peer.serve(echo_workload, SETTINGS, {"OMP_NUM_THREADS": "1"}) as started:
        assert started.name == name
        assert started.startup_s > 0
        assert started.target.host == "127.0.0.1"
        assert started.notes
        # the server's sessions are those its leader, a child of this test, opened; a peer that
        # someone else runs meanwhile is in sessions of its own and does not count
        running = venv_processes(venv_dir)
        sessions = {sid for ppid, sid, _ in running.values() if ppid == os.getpid()}
        ours = {pid for pid, (_, sid, _) in running.items() if sid in sessions}
        assert ours, "the leftover check below would not see this server's processes"

        payload = echo_workload.payload
        assert started.target.body.count(payload) == 1  # the payload, perhaps framed as a form
        # requests of the same length but their own bytes, so mixed-up rows would show
        bodies = [bytes((byte + index) % 256 for byte in payload) for index in range(REQUESTS)]
        with ThreadPoolExecutor(REQUESTS) as pool:
            replies = list(pool.map(
                lambda body: post(started.target, started.target.body.replace(payload, body)),
                bodies))
        assert replies == [(200, body) for body in bodies]

    left = {pid: args for pid, (_, sid, args) in venv_processes(venv_dir).items()
            if pid in ours or sid in sessions}
    assert not left, f"{name} left processes behind: {left}"
