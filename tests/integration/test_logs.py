"""End to end, with `zerobatch start --log-format json`: every line of RUN_DIR/zerobatch.log
is one JSON object, from every process (keeper, broker, front end, management and metrics
APIs, workers, a preloaded worker among them), and a handler's print() and warnings are
records too."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from zerobatch import run_dir

pytestmark = pytest.mark.integration

#: a handler that talks outside logging: print() at import and per batch, stderr, a warning.
#: It mentions torch, so its first worker is a preloaded one (broker/preload.py), though it
#: never imports it.
TALKER = '''\
import sys
import warnings

print("talker: loading")  # needs no torch


def handle(data, context):
    if data is None:
        return None
    print("talker: a batch of", len(data))
    print("talker: to stderr", file=sys.stderr)
    warnings.warn("talker: a warning", UserWarning, stacklevel=1)
    return [row.get("body") for row in data]
'''
MANIFEST = {"runtime": "python", "model": {"modelName": "talker", "modelVersion": "1.0",
                                           "handler": "handler.py"}}
FIELDS = {"time", "level", "process", "pid", "logger", "message"}


def talker_mar(path) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(MANIFEST))
        archive.writestr("handler.py", TALKER)
    return str(path)


def test_log_format_json_writes_one_json_object_a_line_from_every_process(make_server,
                                                                          tmp_path):
    server = make_server({"echo": "echo", "talker": talker_mar(tmp_path / "talker.mar")},
                         "--log-format", "json", "--batch-size", "1")
    assert server.predict("echo", b'{"a": 1}')[0] == 200
    assert server.predict("talker", b'{"b": 2}')[0] == 200
    assert server.management("GET", "/models")[0] == 200
    assert server.stop().returncode == 0  # every process has written its last line
    with open(os.path.join(server.run_dir, run_dir.LOG_FILE), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} of the log is not JSON: {line!r}")
    assert all(FIELDS <= set(record) for record in records)
    processes = {record["process"] for record in records}
    assert {"keeper", "broker", "frontend", "management", "worker"} <= processes
    assert processes <= {"keeper", "broker", "frontend", "management", "metrics", "worker"}
    worker_pids = {record["pid"] for record in records if record["process"] == "worker"}
    assert len(worker_pids) == 2  # echo's and talker's (the preloaded one)
    said = [(r["process"], r["logger"], r["level"], r["message"]) for r in records]
    assert ("worker", "stdout", "INFO", "talker: loading") in said
    assert ("worker", "stdout", "INFO", "talker: a batch of 1") in said
    assert ("worker", "stderr", "WARNING", "talker: to stderr") in said
    assert any(logger == "py.warnings" and "UserWarning: talker: a warning" in message
               for _process, logger, _level, message in said)
    assert any(process == "frontend" and logger.startswith("uvicorn")
               for process, logger, _level, _message in said)
