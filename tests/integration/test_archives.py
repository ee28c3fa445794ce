"""Serving model archives end to end: archives from the real torch-model-archiver (default,
tgz, zip-store) and from ours answer over HTTP; a path-traversal archive is left out, logged,
and the server goes on with the others; a server whose every archive is refused exits; a
handler that imports torch gets its first worker started before the extraction, and a refused
model's leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support.servers import (
    TEST_MODELS,
    cli,
    free_port,
    json_body,
    processes_mentioning,
)
from zerobatch.api import archiver

pytestmark = pytest.mark.integration

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ECHO_HANDLER = os.path.join(TEST_MODELS, "echo", "echo_handler.py")


@pytest.fixture
def archives(tmp_path):
    """name -> archive path: echo packed four ways."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ECHO_HANDLER, src / "echo_handler.py")
    export = tmp_path / "export"
    export.mkdir()
    made = {}
    for name, fmt in (("echo_default", "default"), ("echo_tgz", "tgz"),
                      ("echo_store", "zip-store")):
        result = subprocess.run(
            [REAL_ARCHIVER, "--model-name", name, "--version", "1.0", "--handler",
             str(src / "echo_handler.py"), "--export-path", str(export),
             "--archive-format", fmt], capture_output=True, text=True, cwd=src, timeout=60)
        assert result.returncode == 0, result.stderr
        made[name] = str(export / (name + archiver.SUFFIXES[fmt]))
    assert archiver.main(["--model-name", "echo_ours", "-v", "1.0", "--handler",
                          str(src / "echo_handler.py"), "--export-path", str(export)]) == 0
    made["echo_ours"] = str(export / "echo_ours.mar")
    return made


def traversal_archive(path, handler: str = ECHO_HANDLER) -> str:
    """A .mar with a valid manifest (so `zerobatch start` accepts it) and a `../` member."""
    manifest = {"runtime": "python", "model": {"modelName": "evil", "handler": "echo_handler.py",
                                               "modelVersion": "1.0"}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.write(handler, "echo_handler.py")
        zf.writestr("../../escaped.py", "print('escaped')\n")
    return str(path)


def torch_echo_handler(directory) -> str:
    """The echo handler with an `import torch` on top: a handler broker/preload.py preloads."""
    path = os.path.join(directory, "echo_handler.py")
    with open(ECHO_HANDLER, encoding="utf-8") as source, open(path, "w") as target:
        target.write("import torch  # noqa: F401\n" + source.read())
    return path


def test_archives_from_both_archivers_are_served(make_server, archives):
    server = make_server(archives)
    for name in archives:
        status, _headers, body = server.predict(name, json.dumps({"from": name}).encode())
        assert status == 200, (name, body)
        assert json_body(body) == {"from": name}
    extracted = os.listdir(os.path.join(server.run_dir, "models"))
    assert len(extracted) == len(archives)  # one private directory per archive
    assert not any(entry.startswith(".staging") for entry in extracted)


def test_a_refused_archive_is_left_out_and_logged(make_server, archives, tmp_path):
    bad = traversal_archive(tmp_path / "evil.mar")
    server = make_server({"good": archives["echo_tgz"], "evil": bad})
    status, _headers, body = server.predict("good", b'{"still": "here"}')
    assert (status, json_body(body)) == (200, {"still": "here"})
    status, _headers, body = server.predict("evil", b'"x"')
    assert status == 404, body
    with open(os.path.join(server.run_dir, "zerobatch.log"), encoding="utf-8") as handle:
        log = handle.read()
    assert "model evil/1.0 refused" in log and bad in log and "'..'" in log
    assert not os.path.exists(os.path.join(server.run_dir, "escaped.py"))
    assert not os.path.exists(tmp_path / "escaped.py")


def test_a_server_with_only_refused_archives_exits(tmp_path):
    bad = traversal_archive(tmp_path / "evil.mar")
    run_dir = str(tmp_path / "run")
    result = cli("start", "--run-dir", run_dir, "--http-port", str(free_port()),
                 "--client-address", f"tcp://127.0.0.1:{free_port()}", "--startup-timeout",
                 "60", "--models", f"evil={bad}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "exited with status 2" in result.stderr
    assert "refused" in result.stderr and "'..'" in result.stderr


def test_a_torch_handler_gets_a_preloaded_worker_and_a_refused_one_leaves_none(
        make_server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    handler = torch_echo_handler(src)
    export = tmp_path / "export"
    export.mkdir()
    result = subprocess.run(
        [REAL_ARCHIVER, "--model-name", "torchy", "--version", "1.0", "--handler", handler,
         "--export-path", str(export)], capture_output=True, text=True, cwd=src, timeout=60)
    assert result.returncode == 0, result.stderr
    bad = traversal_archive(tmp_path / "evil.mar", handler)
    server = make_server({"torchy": str(export / "torchy.mar"), "evil": bad})
    status, _headers, body = server.predict("torchy", b'{"preloaded": true}')
    assert (status, json_body(body)) == (200, {"preloaded": True})
    with open(os.path.join(server.run_dir, "zerobatch.log"), encoding="utf-8") as handle:
        log = handle.read()
    assert "started preloaded worker torchy@1.0#0.1" in log
    assert "model evil/1.0: its preloaded worker" in log and "is not needed" in log
    [worker] = server.workers("torchy")
    with open(f"/proc/{worker['pid']}/cmdline", "rb") as handle:
        assert b"--preload\0torch\0--config\0-" in handle.read()
    assert server.stop().returncode == 0
    server.wait_for(lambda: not processes_mentioning(server.run_dir), timeout_s=10,
                    what="every process of the server to exit")
