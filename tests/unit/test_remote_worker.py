"""Remote workers without sockets: the model digest, READY with a digest, the broker's check
of a remote READY (broker/remote_workers.py, BrokerCore), the configuration that requires
CURVE on a TCP worker endpoint, and `zerobatch worker`'s flags (docs/remote-workers.md)."""

from __future__ import annotations

import os

import pytest

from tests.support.broker_core import MS, add, errors, request, take_back, take_front
from zerobatch import protocol as p
from zerobatch.api import cli
from zerobatch.broker.remote_workers import refusal
from zerobatch.config import ServerConfig, WorkerConfig
from zerobatch.errors import ConfigError, ProtocolError
from zerobatch.model_files import model_digest

TEST_MODELS = os.path.join(os.path.dirname(__file__), "..", "models")
KEY = "rq7!Z85-like-public-key-of-the-worker-000000"
REMOTE = b"remote.gpu-host.42.abc123"


# ---------------------------------------------------------------- the digest

def _model(tmp_path, files: dict[str, bytes]):
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(tmp_path)


def test_digest_is_stable_and_names_its_algorithm(tmp_path):
    directory = _model(tmp_path, {"MAR-INF/MANIFEST.json": b"{}", "handler.py": b"x = 1"})
    digest = model_digest(directory)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert model_digest(directory) == digest


@pytest.mark.parametrize("change", ["content", "rename", "add", "remove", "move"])
def test_digest_changes_with_any_file(tmp_path, change):
    directory = _model(tmp_path, {"a.py": b"a", "sub/b.bin": b"bb"})
    before = model_digest(directory)
    if change == "content":
        (tmp_path / "a.py").write_bytes(b"A")
    elif change == "rename":
        (tmp_path / "a.py").rename(tmp_path / "c.py")
    elif change == "add":
        (tmp_path / "weights.pt").write_bytes(b"")
    elif change == "remove":
        (tmp_path / "sub" / "b.bin").unlink()
    else:  # the same bytes under another folder
        (tmp_path / "sub" / "b.bin").rename(tmp_path / "b.bin")
    assert model_digest(directory) != before


def test_digest_leaves_out_bytecode(tmp_path):
    directory = _model(tmp_path, {"handler.py": b"x = 1"})
    before = model_digest(directory)
    _model(tmp_path, {"__pycache__/handler.cpython-311.pyc": b"\0bytecode"})
    assert model_digest(directory) == before


def test_digest_of_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        model_digest(str(tmp_path / "nope"))


def test_digest_of_the_test_model_is_the_same_from_its_copy(tmp_path):
    import shutil

    original = os.path.join(TEST_MODELS, "echo")
    shutil.copytree(original, tmp_path / "echo", ignore=shutil.ignore_patterns("__pycache__"))
    assert model_digest(str(tmp_path / "echo")) == model_digest(original)


# ---------------------------------------------------------------- READY and DISCONNECT

def test_ready_carries_the_digest_and_local_workers_leave_it_out():
    remote = p.encode_ready("m", "1", "remote.h.1.a", 0, 7, "sha256:ab")
    assert p.parse_ready(remote[2])["digest"] == "sha256:ab"
    local = p.encode_ready("m", "1", "m@1#0.1", None, 7)
    assert "digest" not in p.unpack_header(local[2])
    assert p.parse_ready(local[2]).get("digest") is None


def test_ready_with_a_digest_that_is_no_string_is_a_protocol_error():
    info = {"model": "m", "version": "1", "worker_id": "w", "gpu_id": None, "pid": 1,
            "digest": 5}
    with pytest.raises(ProtocolError, match="digest"):
        p.parse_ready(p.packb(info))


def test_disconnect_carries_a_reason():
    frames = p.encode_disconnect_for(b"w", "refused: wrong digest")
    assert frames[0] == b"w" and p.is_disconnect(frames[1:])
    assert p.disconnect_reason(frames[1:]) == "refused: wrong digest"
    assert p.encode_disconnect_for(b"w") == [b"w", *p.DISCONNECT_FRAMES]
    assert p.disconnect_reason(p.DISCONNECT_FRAMES) == ""


# ---------------------------------------------------------------- the check

def _info(worker_id: str = REMOTE.decode(), digest: str | None = "sha256:1") -> dict:
    info = {"model": "echo", "version": "1.0", "worker_id": worker_id, "gpu_id": 0, "pid": 1}
    if digest is not None:
        info["digest"] = digest
    return info


def test_refusal_takes_a_remote_worker_with_the_brokers_digest():
    assert refusal(_info(), KEY, "sha256:1") is None


@pytest.mark.parametrize("info, expected, why", [
    (_info(digest="sha256:2"), "sha256:1", "differ from the broker's"),
    (_info(digest=None), "sha256:1", "sent no model digest"),
    (_info(), None, "no digest for model echo/1.0"),
    (_info(worker_id="echo@1.0#0.1"), "sha256:1", "must start with 'remote.'"),
])
def test_refusal_says_why(info, expected, why):
    assert why in refusal(info, KEY, expected)


def test_local_workers_need_no_digest_but_may_not_pose_as_remote():
    assert refusal(_info(worker_id="echo@1.0#0.1", digest=None), None, None) is None
    assert "did not authenticate" in refusal(_info(), None, "sha256:1")


def _remote_ready(core, digest, now_ns=0, model="echo", version="1.0"):
    core.on_back([REMOTE] + p.encode_ready(model, version, REMOTE.decode(), 0, 42, digest),
                 now_ns)


def test_core_records_a_remote_worker_with_the_right_digest_and_batches_go_to_it(core):
    add(core, batch_size=1)
    core.model_digests["echo/1.0"] = "sha256:1"
    core.peer_of = lambda frames: ("10.0.0.2", KEY)
    _remote_ready(core, "sha256:1")
    assert [w["id"] for w in core.describe()["models"][0]["workers"]] == [REMOTE.decode()]
    assert core.health() == "Healthy"
    request(core, b"r1", 0)
    (batch,) = take_back(core)
    assert batch[0] == REMOTE and batch[2] == p.W_BATCH


@pytest.mark.parametrize("digest", ["sha256:other", None])
def test_core_refuses_a_remote_worker_whose_digest_differs_and_never_sends_it_a_batch(
        core, caplog, digest):
    add(core, batch_size=1)
    core.model_digests["echo/1.0"] = "sha256:1"
    core.peer_of = lambda frames: ("10.0.0.2", KEY)
    _remote_ready(core, digest)
    (dismissal,) = take_back(core)
    assert dismissal[0] == REMOTE and p.is_disconnect(dismissal[1:])
    assert p.disconnect_reason(dismissal[1:]).startswith("refused: model echo/1.0")
    assert core.workers == {} and core.describe()["models"][0]["workers"] == []
    assert "refused" in caplog.text
    request(core, b"r1", 0)
    core.on_back([REMOTE, p.VERSION, p.W_HEARTBEAT], 0)  # its heartbeats change nothing
    core.on_tick(10 * MS)
    assert [m for m in take_back(core) if m[2] in (p.W_BATCH, p.W_BATCHES)] == []


def test_core_refuses_a_remote_worker_for_a_model_it_has_no_digest_of(core):
    add(core)
    core.peer_of = lambda frames: ("10.0.0.2", KEY)
    _remote_ready(core, "sha256:1")
    (dismissal,) = take_back(core)
    assert "no digest" in p.disconnect_reason(dismissal[1:])
    assert core.workers == {}


def test_core_dismisses_a_remote_worker_of_an_unknown_version(core):
    add(core)
    core.model_digests["echo/1.0"] = "sha256:1"
    core.peer_of = lambda frames: ("10.0.0.2", KEY)
    _remote_ready(core, "sha256:1", version="9")
    (dismissal,) = take_back(core)
    assert p.is_disconnect(dismissal[1:]) and core.workers == {}


def test_a_silent_remote_worker_is_lost_after_the_liveness_bound(core):
    add(core, batch_size=1)
    core.model_digests["echo/1.0"] = "sha256:1"
    core.peer_of = lambda frames: ("10.0.0.2", KEY)
    _remote_ready(core, "sha256:1")
    request(core, b"r1", 0)
    take_back(core)
    bound_ms = p.HEARTBEAT_LIVENESS * p.HEARTBEAT_INTERVAL_MS
    core.on_tick((bound_ms - 1) * MS)
    assert errors(take_front(core)) == []
    core.on_tick(bound_ms * MS)
    assert errors(take_front(core)) == [(b"r1", "worker_lost")]
    assert core.workers == {}


# ---------------------------------------------------------------- configuration

def test_a_tcp_worker_address_without_curve_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        ServerConfig(worker_address="tcp://10.0.0.1:9600")
    assert "--curve-worker-keys" in str(refused.value) and "\n" not in str(refused.value)


def test_worker_keys_need_the_server_key_and_an_address():
    with pytest.raises(ConfigError, match="--curve-secret-key"):
        ServerConfig(worker_address="tcp://10.0.0.1:9600", curve_worker_keys="/k")
    with pytest.raises(ConfigError, match="--worker-address"):
        ServerConfig(curve_secret_key="/s.key_secret", curve_worker_keys="/k")


def test_curve_on_the_worker_endpoint_alone_or_with_clients_is_accepted():
    workers_only = ServerConfig(worker_address="tcp://10.0.0.1:9600",
                                curve_secret_key="/s.key_secret", curve_worker_keys="/k")
    assert not workers_only.curve_authorized_keys
    ServerConfig(worker_address="tcp://10.0.0.1:9600", curve_secret_key="/s.key_secret",
                 curve_worker_keys="/k", curve_authorized_keys="/c")
    ServerConfig(worker_address="ipc:///tmp/zb-workers.sock")  # local IPC stays as it is
    with pytest.raises(ConfigError, match="CURVE needs both"):
        ServerConfig(curve_secret_key="/s.key_secret")


def test_start_flags_reach_the_config(tmp_path):
    args = cli.build_parser().parse_args([
        "start", "--model-store", TEST_MODELS, "--models", "echo=echo", "--workers", "0",
        "--worker-address", "tcp://10.0.0.1:9600", "--curve-secret-key", "s.key_secret",
        "--curve-worker-keys", str(tmp_path)])
    config = cli.server_config(args)
    assert config.curve_worker_keys == str(tmp_path)
    assert config.curve_secret_key == os.path.abspath("s.key_secret")


# ---------------------------------------------------------------- `zerobatch worker`

def _worker_args(tmp_path, *extra: str, broker="tcp://10.0.0.1:9600", model=None):
    for name in ("server.key", "gpu1.key_secret"):
        (tmp_path / name).write_text("")
    model = model or f"echo={os.path.join(TEST_MODELS, 'echo')}"
    return cli.build_parser().parse_args([
        "worker", "--broker", broker, "--model", model,
        "--curve-server-key", str(tmp_path / "server.key"),
        "--curve-secret-key", str(tmp_path / "gpu1.key_secret"), *extra])


def test_worker_flags_make_a_remote_worker_config(tmp_path):
    config = cli.worker_config(_worker_args(tmp_path, "--gpu-id", "1"))
    assert isinstance(config, WorkerConfig) and config.remote
    assert config.worker_id.startswith("remote.")
    assert config.model.name == "echo" and config.model.version == "1.0"
    assert config.gpu_id == 1 and config.broker_address == "tcp://10.0.0.1:9600"
    assert WorkerConfig.from_json(config.to_json()) == config
    named = cli.worker_config(_worker_args(tmp_path, "--worker-id", "gpu-a",
                                           "--model-version", "2"))
    assert named.worker_id == "remote.gpu-a" and named.model.version == "2"


@pytest.mark.parametrize("broker, model, why", [
    ("ipc:///tmp/x.sock", None, "tcp://"),
    ("tcp://10.0.0.1:9600", "echo", "NAME=PATH"),
    ("tcp://10.0.0.1:9600", "echo=/does/not/exist", "not a directory"),
])
def test_worker_flags_that_cannot_work_are_refused(tmp_path, broker, model, why):
    with pytest.raises(cli.CliError, match=why):
        cli.worker_config(_worker_args(tmp_path, broker=broker, model=model))


def test_local_worker_configs_stay_local():
    config = WorkerConfig.from_json(WorkerConfig(
        worker_id="echo@1.0#0.1", broker_address="ipc:///x",
        model=cli.ModelConfig(name="echo", path="/x")).to_json())
    assert not config.remote
