"""Remote workers across a real network link: a broker in the root network namespace, a
`zerobatch worker` in a namespace of its own, joined by a veth pair with 10.x addresses
(docs/remote-workers.md).

Needs root and a working `ip netns` (the module is skipped, with the reason, without them).
The test makes the namespace and the link, and deletes them, and every process it started,
in finalizers. What it shows: requests are served through the remote worker; a worker whose
key is not authorized never registers; a worker whose model files differ from the broker's
is refused at READY and exits 5 with the reason in its log; cutting the link answers the
in-flight requests with worker_lost (503) within the liveness bound, and none hangs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.support.servers import ROOT, TEST_MODELS, cli, finish, free_port, start_server
from zerobatch import protocol

pytestmark = pytest.mark.integration

#: the broker declares a silent worker lost HEARTBEAT_LIVENESS intervals after it last heard
#: from it (docs/remote-workers.md); the slack covers the poll turn and a loaded test host
LIVENESS_BOUND_S = protocol.HEARTBEAT_LIVENESS * protocol.HEARTBEAT_INTERVAL_MS / 1000
SLACK_S = 2.0
#: how long a handler sleeps in the link test: far longer than the bound
LONG_SLEEP_MS = 30_000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


def _netns_unusable() -> str:
    """Why `ip netns` cannot be used here, or "" when it can (tried for real)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"zbprobe{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


_UNUSABLE = _netns_unusable()
if _UNUSABLE:
    pytest.skip(f"remote worker tests need network namespaces: {_UNUSABLE}",
                allow_module_level=True)


@dataclass
class Link:
    """A namespace for the worker and a veth pair: host_ip (root namespace) <-> worker_ip."""

    namespace: str
    host_veth: str
    host_ip: str
    worker_ip: str
    processes: list = field(default_factory=list)


@pytest.fixture
def link():
    tag = secrets.token_hex(3)
    subnet = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
    made = Link(namespace=f"zbw{tag}", host_veth=f"zbh{tag}", host_ip=f"{subnet}.1",
                worker_ip=f"{subnet}.2")
    peer = f"zbp{tag}"
    try:
        _ip("netns", "add", made.namespace)
        _ip("link", "add", made.host_veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", made.namespace)
        _ip("addr", "add", f"{made.host_ip}/24", "dev", made.host_veth)
        _ip("link", "set", made.host_veth, "up")
        _ip("netns", "exec", made.namespace, "ip", "addr", "add", f"{made.worker_ip}/24",
            "dev", peer)
        _ip("netns", "exec", made.namespace, "ip", "link", "set", peer, "up")
        _ip("netns", "exec", made.namespace, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for process in made.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        _ip("netns", "del", made.namespace, check=False)
        _ip("link", "del", made.host_veth, check=False)  # gone with the namespace, mostly


@dataclass
class Keys:
    directory: str
    workers_dir: str
    clients_dir: str

    def public(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.key")

    def secret(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.key_secret")


@pytest.fixture
def keys():
    directory = tempfile.mkdtemp(prefix="zbkeys")
    made = Keys(os.path.join(directory, "keys"), os.path.join(directory, "workers"),
                os.path.join(directory, "clients"))
    for args in (("server",), ("gpu1", "--authorize", made.workers_dir),
                 ("alice", "--authorize", made.clients_dir), ("intruder",)):
        result = cli("keys", *args, "--dir", made.directory)
        assert result.returncode == 0, result.stderr
    yield made
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def broker(link, keys):
    """A broker in the root namespace serving "slow" with no local worker: remote only. Its
    client endpoint takes CURVE clients too (alice), whose keys must not open the workers'."""
    address = f"tcp://{link.host_ip}:{free_port()}"
    server = start_server(
        {"slow": "slow"}, "--workers", "0", "--worker-address", address,
        "--curve-secret-key", keys.secret("server"), "--curve-worker-keys", keys.workers_dir,
        "--curve-authorized-keys", keys.clients_dir,
        "--batch-size", "3", "--max-batch-delay", "500", "--batch-policy", "full_delay",
        "--admission", "queue")
    server.worker_address = address
    yield server
    finish(server)


def start_worker(link: Link, broker, keys: Keys, key: str = "gpu1",
                 model_dir: str = os.path.join(TEST_MODELS, "slow")) -> tuple:
    """`zerobatch worker` in the worker's namespace; (process, log path)."""
    log_path = os.path.join(broker.run_dir, f"remote-worker-{len(link.processes)}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", link.namespace, sys.executable, "-m", "zerobatch.api.cli",
             "worker", "--broker", broker.worker_address, "--model", f"slow={model_dir}",
             "--curve-server-key", keys.public("server"),
             "--curve-secret-key", keys.secret(key)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    link.processes.append(process)
    return process, log_path


def remote_workers(broker) -> list[dict]:
    return [w for w in broker.workers("slow") if w["id"].startswith("remote.")]


def read(path: str) -> str:
    with open(path, errors="replace") as handle:
        return handle.read()


def test_requests_are_served_through_the_remote_worker(link, broker, keys):
    process, log_path = start_worker(link, broker, keys)
    broker.wait_for(lambda: remote_workers(broker), timeout_s=60,
                    what=f"the remote worker to register; its log:\n{read(log_path)}")
    status, _headers, body = broker.predict("slow", json.dumps({"tag": "a"}).encode())
    assert status == 200, body
    assert json.loads(body)["seen"] == ["a"]
    assert process.poll() is None
    (worker,) = remote_workers(broker)
    assert worker["pid"] == process.pid  # `zerobatch worker` becomes the worker process
    process.send_signal(signal.SIGTERM)  # a clean stop: it says DISCONNECT and leaves
    assert process.wait(20) == 0
    broker.wait_for(lambda: not remote_workers(broker), what="the worker to be gone")


@pytest.mark.parametrize("key", ["intruder", "alice"])  # unknown; a client's, not a worker's
def test_a_worker_with_an_unauthorized_key_never_registers(link, broker, keys, key):
    process, log_path = start_worker(link, broker, keys, key=key)
    # the CURVE handshake is refused, so the worker never hears the broker: it gives up after
    # the liveness bound (exit 4), having never been recorded
    code = process.wait(30)
    assert code == 4, read(log_path)
    assert "broker lost" in read(log_path)
    assert remote_workers(broker) == []
    assert [m["requests"] for m in broker.describe()["models"]] == [0]


def test_a_worker_whose_model_files_differ_is_refused(link, broker, keys, tmp_path):
    changed = tmp_path / "slow"
    shutil.copytree(os.path.join(TEST_MODELS, "slow"), changed,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (changed / "weights.bin").write_bytes(b"not the broker's weights")
    os.chmod(tmp_path, 0o755)
    process, log_path = start_worker(link, broker, keys, model_dir=str(changed))
    code = process.wait(60)
    log = read(log_path)
    assert code == 5, log
    assert "refused" in log and "digest" in log and "differ from the broker's" in log
    assert remote_workers(broker) == []


def test_cutting_the_link_answers_in_flight_requests_worker_lost(link, broker, keys):
    process, log_path = start_worker(link, broker, keys)
    broker.wait_for(lambda: remote_workers(broker), timeout_s=60,
                    what=f"the remote worker to register; its log:\n{read(log_path)}")
    answers: list = []

    def ask(tag: str) -> None:
        body = json.dumps({"tag": tag, "sleep_ms": LONG_SLEEP_MS}).encode()
        answers.append(broker.predict("slow", body))

    threads = [threading.Thread(target=ask, args=(f"r{i}",), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    broker.wait_for(lambda: any(w["status"] == "BUSY" for w in remote_workers(broker)),
                    what="the batch to be in flight on the remote worker")
    cut_at = time.monotonic()
    _ip("link", "set", link.host_veth, "down")
    for thread in threads:
        thread.join(LIVENESS_BOUND_S + SLACK_S + 10)
    waited_s = time.monotonic() - cut_at
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert len(answers) == 3
    for status, _headers, body in answers:  # WorkerLost, in TorchServe's words
        assert json.loads(body) == {"code": 500, "type": "InternalServerException",
                                    "message": "Worker died."}, body
        assert status == 500
    print(f"in-flight requests answered {waited_s:.2f} s after the link was cut")
    assert waited_s <= LIVENESS_BOUND_S + SLACK_S, f"answered {waited_s:.1f} s after the cut"
    assert remote_workers(broker) == []
    # the worker, cut off, hears nothing either and exits (broker lost)
    assert process.wait(LIVENESS_BOUND_S + 10) == 4, read(log_path)


def test_an_authorized_key_cannot_take_over_another_workers_identity(link, broker, keys):
    """The back ROUTER refuses a second connection under an identity in use (no handover):
    a peer with an authorized key that claims the remote worker's id gets none of its batches,
    and the worker serves on."""
    import zmq
    import zmq.auth

    process, log_path = start_worker(link, broker, keys)
    broker.wait_for(lambda: remote_workers(broker), timeout_s=60,
                    what=f"the remote worker to register; its log:\n{read(log_path)}")
    (worker,) = remote_workers(broker)
    context = zmq.Context()
    rogue = context.socket(zmq.DEALER)
    try:
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.setsockopt(zmq.ROUTING_ID, worker["id"].encode())
        public, secret = zmq.auth.load_certificate(keys.secret("gpu1"))
        rogue.curve_publickey, rogue.curve_secretkey = public, secret
        rogue.curve_serverkey, _ = zmq.auth.load_certificate(keys.public("server"))
        rogue.connect(broker.worker_address)
        rogue.send_multipart([protocol.VERSION, protocol.W_HEARTBEAT])
        for seen, tag in enumerate(("x", "y", "z"), 1):  # the worker's handler saw each
            status, _headers, body = broker.predict("slow", json.dumps({"tag": tag}).encode())
            assert status == 200, body
            assert json.loads(body)["seen"] == ["x", "y", "z"][:seen]
        assert rogue.poll(0) == 0  # not one batch reached the impostor
    finally:
        rogue.close()
        context.term()
    assert process.poll() is None
    assert [w["id"] for w in remote_workers(broker)] == [worker["id"]]
