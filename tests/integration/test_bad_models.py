"""End to end, with `zerobatch start`: bad models are left out and the others served; what a
failing model tells HTTP clients names no server path; a run directory's stale extraction
staging (a broker killed while extracting) is cleaned at the next start."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile

import pytest

from tests.support.servers import (
    TEST_MODELS,
    Server,
    cli,
    finish,
    free_port,
    isolated_flags,
    json_body,
)

pytestmark = pytest.mark.integration

MANIFEST = {"runtime": "python", "model": {"modelName": "m", "modelVersion": "1.0",
                                           "handler": "handler.py"}}


def bad_mar(path, manifest: str) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", manifest)
        zf.writestr("handler.py", "def handle(data, context):\n    return data\n")
    return str(path)


def model_dir(path, handler_source: str) -> str:
    (path / "MAR-INF").mkdir(parents=True)
    (path / "handler.py").write_text(handler_source)
    (path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(MANIFEST))
    return str(path)


def warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("zerobatch: warning:")]


def test_a_mar_whose_manifest_is_not_json_is_left_out_and_the_others_served(make_server,
                                                                            tmp_path):
    bad = bad_mar(tmp_path / "notjson.mar", "{this is not json")
    deep = bad_mar(tmp_path / "deep.mar", "[" * 100_000)
    folder = tmp_path / "folder"  # the same manifest, given as a directory and as a .tar.gz
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text("{this is not json")
    tgz = tmp_path / "notjson.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="notjson")
    server = make_server({"echo": "echo", "bad": bad, "deep": deep, "folder": str(folder),
                          "tgz": str(tgz)})
    warnings = warning_lines(server.start_output)
    assert len(warnings) == 4, server.start_output
    assert f"model {bad} left out" in warnings[0] and "not valid JSON" in warnings[0]
    assert f"model {deep} left out" in warnings[1] and "nested too deeply" in warnings[1]
    assert f"model {folder} left out" in warnings[2] and "not valid JSON" in warnings[2]
    assert f"model {tgz} left out" in warnings[3] and "not valid JSON" in warnings[3]
    status, _h, body = server.predict("echo", b'{"ok": 1}')
    assert (status, json_body(body)) == (200, {"ok": 1})
    for name in ("bad", "deep", "folder", "tgz"):
        status, _h, body = server.predict(name, b"{}")
        assert status == 404 and json_body(body)["type"] == "ModelNotFoundException"


def test_when_every_model_is_left_out_start_fails(tmp_path):
    bad = bad_mar(tmp_path / "notjson.mar", "{this is not json")
    run_dir = tmp_path / "run"
    result = cli("start", "--run-dir", str(run_dir), "--models", f"bad={bad}",
                 "--http-port", str(free_port()), "--startup-timeout", "30")
    assert result.returncode == 2, result.stderr
    assert f"warning: model {bad} left out" in result.stderr
    assert "no model left to serve" in result.stderr
    assert not os.path.exists(run_dir / "broker.pid")


def test_failing_models_tell_clients_no_server_path(make_server, tmp_path):
    """With --zerobatch-answers, a load failure (503) and a handler exception (500) both carry
    the handler's text, with absolute paths cut to their last component."""
    broken = model_dir(tmp_path / "broken", (
        "import os\n"
        "raise RuntimeError('weights missing in ' + os.path.abspath(__file__))\n"))
    leaky = model_dir(tmp_path / "leaky", (
        "import os\n"
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        "    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'missing.bin'))\n"))
    server = make_server({"echo": "echo", "broken": broken, "leaky": leaky},
                         "--zerobatch-answers")

    status, _h, body = server.predict("broken", b"{}")
    error = json_body(body)
    assert (status, error["type"]) == (503, "ModelLoadFailed"), body
    assert "weights missing in handler.py" in error["message"]
    assert str(tmp_path) not in error["message"] and TEST_MODELS not in error["message"]
    status, _h, body = server.predict("leaky", b"{}")
    error = json_body(body)
    assert status == 500, body
    assert error["message"] == ("FileNotFoundError: [Errno 2] No such file or directory: "
                                "'missing.bin'")
    with open(os.path.join(server.run_dir, "zerobatch.log")) as handle:
        log = handle.read()
    assert f"weights missing in {broken}/handler.py" in log  # the server's log has it all
    assert f"{leaky}/missing.bin" in log


@pytest.fixture
def stale_run_dir(tmp_path):
    """A run directory with what a broker killed while extracting leaves, plus links named
    like staging that point at files that must survive."""
    run_dir = tempfile.mkdtemp(prefix="zb")
    models = os.path.join(run_dir, "models")
    staging = os.path.join(models, ".staging-echo-0123456789ab-4242")
    os.makedirs(os.path.join(staging, "MAR-INF"))
    with open(os.path.join(staging, "weights.pt"), "wb") as handle:
        handle.write(b"half written")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.symlink(outside, os.path.join(staging, "inner-link"))
    os.symlink(outside, os.path.join(models, ".staging-link"))
    yield run_dir, outside
    shutil.rmtree(run_dir, ignore_errors=True)


def test_start_removes_stale_staging_without_following_links(stale_run_dir):
    run_dir, outside = stale_run_dir
    server = Server(run_dir=run_dir, http_port=free_port(),
                    client_address=f"tcp://127.0.0.1:{free_port()}", env=dict(os.environ))
    try:
        result = cli("start", "--run-dir", run_dir, "--http-port", str(server.http_port),
                     "--client-address", server.client_address, "--startup-timeout", "60",
                     "--model-store", TEST_MODELS, "--models", "echo=echo",
                     *isolated_flags())
        assert result.returncode == 0, result.stdout + result.stderr
        assert os.listdir(os.path.join(run_dir, "models")) == []
        assert sorted(os.listdir(outside)) == ["precious.txt"]
        assert (outside / "precious.txt").read_text() == "keep me"
        assert server.predict("echo", b'{"ok": 1}')[0] == 200
    finally:
        finish(server)
