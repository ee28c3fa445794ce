"""Regression tests for the bugs the fuzzers found outside the fuzz harness, each on the input
tests/fuzz/regressions.py keeps for it: a damaged archive is refused with ArchiveError by the
broker and by the CLI, a READY naming another worker is refused and strands no request, and
POST /predictions/ is a 404."""

from __future__ import annotations

import logging

import pytest

from tests.fuzz import regressions
from zerobatch import protocol as p
from zerobatch.api import archiver
from zerobatch.broker import archive
from zerobatch.errors import ArchiveError

DAMAGED = regressions.damaged_archives()
DAMAGED_MANIFESTS = regressions.damaged_manifest_archives()


def _write(tmp_path, data: bytes) -> str:
    path = tmp_path / "model.mar"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_prepare_model_refuses_a_damaged_archive_with_archive_error(tmp_path, name):
    """Any other exception (the zip or tar reader's own) propagates and fails the test."""
    path = _write(tmp_path, DAMAGED[name])
    work_root = tmp_path / "work"
    with pytest.raises(ArchiveError):
        archive.prepare_model(path, str(work_root))
    models = work_root / archive.MODELS_DIR
    assert not models.exists() or not list(models.iterdir()), "a staging directory was left"


@pytest.mark.parametrize("name", sorted(DAMAGED_MANIFESTS))
def test_read_archive_manifest_refuses_a_damaged_archive_with_archive_error(tmp_path, name):
    with pytest.raises(ArchiveError):
        archiver.read_archive_manifest(_write(tmp_path, DAMAGED_MANIFESTS[name]))


def test_a_ready_naming_another_worker_is_refused_and_strands_no_request(caplog):
    caplog.set_level(logging.WARNING, logger="zerobatch.broker")
    core, answers = regressions.misnamed_ready_conversation()
    assert not core.workers, "the misnamed worker was registered"
    assert [(command, rid) for command, rid, _a, _b in answers] == [(p.ERROR, b"r")], answers
    assert p.parse_error_info(answers[0][2])[0] == "deadline_exceeded"
    refused = [record for record in caplog.records
               if record.levelno == logging.WARNING and "names worker 'w2'" in record.getMessage()]
    assert len(refused) == 1, [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize("path", ["/predictions/", "/predictions/%2F", "/predictions//1"])
def test_an_empty_model_name_is_not_found(path):
    status, body, client_calls = regressions.empty_model_name_response(path)
    assert status == 404
    assert body is not None and set(body) == {"code", "type", "message"}
    assert body["code"] == 404
    assert client_calls == 0, "the empty model name reached the client"


@pytest.mark.parametrize("name", sorted(regressions.bad_tensor_requests()))
def test_a_malformed_tensor_request_is_a_tensor_error(name):
    from zerobatch.api.tensors import TensorError, parse_request
    with pytest.raises(TensorError):
        parse_request(regressions.bad_tensor_requests()[name], None)
