"""Record TorchServe 0.12.0's answers on the routes that carry more than a model name: the
path segments after a model's version (the `url_path` request header), and explanations
(`/explanations/...`, and KServe v1's `:explain` under TorchServe's kserve envelope).

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_routes

writes tests/data/torchserve_answers/routes.json; tests/integration/test_torchserve_routes.py
replays each stored request against zerobatch serving the same archives (built here by
`build_archives`, with the real torch-model-archiver) and compares the answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from tests.support.forms import multipart
from tests.support.torchserve_answers import TORCHSERVE_BIN, TorchServe, save

HANDLERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers")
#: model name -> handler file under tests/torchserve/handlers/; every archive is version 1.0
ARCHIVES = {"echo": "url_path_echo.py", "explainer": "explain_handler.py",
            "insights": "insights_handler.py", "noexplain": "no_explain_handler.py"}
VERSION = "1.0"
TEXT = {"content-type": "text/plain"}
JSON_TYPE = {"content-type": "application/json"}
BOUNDARY = "zerobatch-routes-boundary"
FORM = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

#: case -> (method, path, body, headers), each answered by TorchServe as it serves ARCHIVES
CASES: dict[str, tuple[str, str, bytes, dict]] = {
    # url_path: what follows /predictions/{model}/{version}/, without its leading slash
    "url_path_none": ("POST", "/predictions/echo", b"x", TEXT),
    "url_path_version_only": ("POST", "/predictions/echo/1.0", b"x", TEXT),
    "url_path_one_segment": ("POST", "/predictions/echo/1.0/x", b"x", TEXT),
    "url_path_chat": ("POST", "/predictions/echo/1.0/v1/chat/completion", b"x", TEXT),
    "url_path_put": ("PUT", "/predictions/echo/1.0/v1/chat/completion", b"x", TEXT),
    "url_path_trailing_slash": ("POST", "/predictions/echo/1.0/a/b/", b"x", TEXT),
    "url_path_version_trailing_slash": ("POST", "/predictions/echo/1.0/", b"x", TEXT),
    "url_path_double_slash": ("POST", "/predictions/echo/1.0/a//b", b"x", TEXT),
    "url_path_percent_encoded": ("POST", "/predictions/echo/1.0/a%20b/c%2Fd", b"x", TEXT),
    "url_path_query": ("POST", "/predictions/echo/1.0/v1/models?limit=2", b"x", TEXT),
    "url_path_client_headers_overridden": (
        "POST", "/predictions/echo/1.0/x", b"x",
        {**TEXT, "url_path": "spoofed", "explain": "True"}),
    "url_path_unknown_version": ("POST", "/predictions/echo/2.0/x", b"x", TEXT),
    "url_path_on_explanations": ("POST", "/explanations/echo/1.0/v1/explain", b"x", TEXT),
    "explain_header_on_explanations": ("POST", "/explanations/echo", b"x", TEXT),
    # explanations of BaseHandler subclasses
    "explain_own_handle": ("POST", "/explanations/explainer", b"hello", TEXT),
    "explain_own_handle_version": ("POST", "/explanations/explainer/1.0", b"hey", TEXT),
    "explain_own_handle_url_path": ("POST", "/explanations/explainer/1.0/deep/er", b"hi",
                                    TEXT),
    "explain_predictions_unchanged": ("POST", "/predictions/explainer", b"hello", TEXT),
    "explain_default_handle_json": ("POST", "/explanations/insights",
                                    b'{"data": "abc", "target": 2}', JSON_TYPE),
    "explain_default_handle_form": (
        "POST", "/explanations/insights",
        multipart(BOUNDARY, ("data", None, None, b"abc"), ("target", None, None, b"2")), FORM),
    "explain_default_handle_no_target": ("POST", "/explanations/insights", b"abc", TEXT),
    "explain_without_support": ("POST", "/explanations/noexplain", b"abc", TEXT),
    "explain_unknown_model": ("POST", "/explanations/nosuch", b"abc", TEXT),
}

#: KServe v1's explain, answered by TorchServe with `service_envelope=kserve` (the envelope
#: KServe's TorchServe runtime sets): the instances reach the handler, the answer is
#: {"explanations": [one per instance]}
KSERVE_CASES: dict[str, tuple[str, str, bytes, dict]] = {
    "kserve_v1_explain": ("POST", "/v1/models/explainer:explain",
                          b'{"instances": [{"data": "hello"}, {"data": "hi"}]}', JSON_TYPE),
    "kserve_v1_predict": ("POST", "/v1/models/explainer:predict",
                          b'{"instances": [{"data": "hello"}, {"data": "hi"}]}', JSON_TYPE),
}


def build_archives(export_dir: str, archiver: str) -> dict[str, str]:
    """Pack each model of ARCHIVES with the torch-model-archiver at `archiver` into
    export_dir; model name -> archive file name."""
    archives = {}
    for name, handler in ARCHIVES.items():
        subprocess.run(
            [archiver, "--model-name", name, "--version", VERSION,
             "--handler", os.path.join(HANDLERS, handler), "--export-path", export_dir,
             "--force"], check=True, capture_output=True, timeout=120)
        archives[name] = f"{name}.mar"
    return archives


def main() -> int:
    answers = {}
    with tempfile.TemporaryDirectory() as store:
        archives = build_archives(store, os.path.join(TORCHSERVE_BIN, "torch-model-archiver"))
        with TorchServe(store, archives) as torchserve:
            for case, (method, path, body, headers) in CASES.items():
                answers[case] = torchserve.record(method, path, body, headers)
        with TorchServe(store, {"explainer": archives["explainer"]},
                        config={"service_envelope": "kserve"}) as torchserve:
            for case, (method, path, body, headers) in KSERVE_CASES.items():
                answers[case] = torchserve.record(method, path, body, headers)
    for case, answer in answers.items():
        print(case, answer["status"], json.dumps(answer["headers"].get("content-type")))
    print(save("routes", answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
