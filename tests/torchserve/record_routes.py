"""Record TorchServe 0.12.0's answers on the routes that carry more than a model name: the
path segments after a model's version (the `url_path` request header), and explanations
(`/explanations/...`, and KServe v1's `:explain` under TorchServe's kserve envelope); and on
the rest of its inference routes and methods (METHOD_CASES, SINGLE_MODEL_CASES): any method
on `/predictions` and `/explanations` (OPTIONS answers the model's own API description),
SageMaker's `/invocations` and `/models/{model}/invoke`, the legacy `/{model}/predict`, and
an upload over the size limit that asks `Expect: 100-continue` (EXPECT_CASE).

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_routes

writes tests/data/torchserve_answers/routes.json; tests/integration/test_torchserve_routes.py
replays each stored request against zerobatch serving the same archives (built here by
`build_archives`, with the real torch-model-archiver) and compares the answers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile

from tests.support.forms import multipart
from tests.support.torchserve_answers import TORCHSERVE_BIN, TorchServe, save

HANDLERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers")
#: model name -> handler file under tests/torchserve/handlers/; every archive is version 1.0
ARCHIVES = {"echo": "url_path_echo.py", "explainer": "explain_handler.py",
            "insights": "insights_handler.py", "noexplain": "no_explain_handler.py",
            "answers": "answers_handler.py"}
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


URLENCODED = {"content-type": "application/x-www-form-urlencoded"}
#: a body that TorchServe hands the `answers` handler as one row; it answers the row's items
HELLO = (b"hello", TEXT)

#: case -> (method, path, body, headers) on the other inference routes and methods, answered
#: by TorchServe serving ARCHIVES (several models: /invocations needs a model_name). The
#: `answers` handler (tests/torchserve/handlers/answers_handler.py) answers the row it got:
#: the body, and the query's parameters on /invocations, /models/{m}/invoke and the legacy
#: /{m}/predict, where TorchServe adds them to the request's fields.
METHOD_CASES: dict[str, tuple[str, str, bytes, dict]] = {
    # every method on /predictions and /explanations predicts, with the body it has
    "get_prediction": ("GET", "/predictions/answers", b"", {}),
    "get_prediction_with_body": ("GET", "/predictions/answers", *HELLO),
    "delete_prediction": ("DELETE", "/predictions/answers", b"", {}),
    "patch_prediction": ("PATCH", "/predictions/answers/1.0", *HELLO),
    "head_prediction": ("HEAD", "/predictions/answers", b"", {}),
    "get_prediction_url_path": ("GET", "/predictions/echo/1.0/v1/models", b"", {}),
    "get_explanation": ("GET", "/explanations/echo", b"", {}),
    "get_prediction_unknown_model": ("GET", "/predictions/nosuch", b"", {}),
    "head_prediction_unknown_model": ("HEAD", "/predictions/nosuch", b"", {}),
    "delete_prediction_unknown_version": ("DELETE", "/predictions/answers/9.9", b"", {}),
    "get_predictions_no_model": ("GET", "/predictions", b"", {}),
    # ... whatever the method: HTTP's others and WebDAV's too
    "trace_prediction": ("TRACE", "/predictions/answers", b"", {}),
    "propfind_prediction": ("PROPFIND", "/predictions/answers", *HELLO),
    "mkcol_invocations": ("MKCOL", "/invocations?model_name=answers", b"", {}),
    # /ping answers its health whatever the method, and whatever path follows it
    "get_ping_path": ("GET", "/ping/anything/at/all", b"", {}),
    "post_ping_predict": ("POST", "/ping/predict", *HELLO),
    "post_ping": ("POST", "/ping", *HELLO),
    "head_ping": ("HEAD", "/ping", b"", {}),
    "put_ping": ("PUT", "/ping", b"", {}),
    "options_ping": ("OPTIONS", "/ping", b"", {}),
    # OPTIONS: the model's own API description, the handler not called
    "options_prediction": ("OPTIONS", "/predictions/answers", b"", {}),
    "options_prediction_version": ("OPTIONS", "/predictions/echo/1.0", b"", {}),
    "options_prediction_url_path": ("OPTIONS", "/predictions/echo/1.0/v1/models", b"", {}),
    "options_explanation": ("OPTIONS", "/explanations/explainer", b"", {}),
    "options_prediction_unknown_model": ("OPTIONS", "/predictions/nosuch", b"", {}),
    "options_prediction_unknown_version": ("OPTIONS", "/predictions/echo/9.9", b"", {}),
    # SageMaker's /invocations: the model from the query's model_name (or a form field)
    "invocations": ("POST", "/invocations?model_name=answers", *HELLO),
    "invocations_query_fields": ("POST", "/invocations?model_name=answers&k=1&k=2&flag",
                                 *HELLO),
    "invocations_json": ("POST", "/invocations?model_name=answers", b'{"a": [1, 2]}',
                         JSON_TYPE),
    "invocations_urlencoded": ("POST", "/invocations?model_name=answers&q=1", b"a=2&q=3",
                               URLENCODED),
    "invocations_multipart": (
        "POST", "/invocations?q=1",
        multipart(BOUNDARY, ("model_name", None, None, b"answers"),
                  ("data", "x.txt", "text/plain", b"abc")), FORM),
    "invocations_form_model_name": ("POST", "/invocations", b"model_name=answers&a=1",
                                    URLENCODED),
    "invocations_get": ("GET", "/invocations?model_name=answers", b"", {}),
    "invocations_put": ("PUT", "/invocations?model_name=answers", *HELLO),
    "invocations_no_model_name": ("POST", "/invocations", *HELLO),
    "invocations_empty_model_name": ("POST", "/invocations?model_name=", *HELLO),
    "invocations_unknown_model": ("POST", "/invocations?model_name=nosuch", *HELLO),
    "invocations_trailing_segment": ("POST", "/invocations/answers", *HELLO),
    "invocations_trailing_slash": ("POST", "/invocations/?model_name=answers", *HELLO),
    "options_invocations": ("OPTIONS", "/invocations?model_name=answers", b"", {}),
    # SageMaker's /models/{model}/invoke
    "invoke": ("POST", "/models/answers/invoke", *HELLO),
    "invoke_query_fields": ("POST", "/models/answers/invoke?k=v", *HELLO),
    "invoke_get": ("GET", "/models/answers/invoke", b"", {}),
    "invoke_unknown_model": ("POST", "/models/nosuch/invoke", *HELLO),
    "invoke_other_action": ("POST", "/models/answers/predict", *HELLO),
    "invoke_model_name_in_query": ("POST", "/models/answers/invoke?model_name=echo", *HELLO),
    "models_on_inference_port": ("GET", "/models", b"", {}),
    # the legacy /{model}[/{version}]/predict
    "legacy_predict": ("POST", "/answers/predict", *HELLO),
    "legacy_predict_version": ("POST", "/answers/1.0/predict", *HELLO),
    "legacy_predict_query_data": ("POST", "/answers/predict?data=abc", b"", {}),
    "legacy_predict_get": ("GET", "/answers/predict?data=abc", b"", {}),
    "legacy_predict_trailing_slash": ("POST", "/answers/predict/", *HELLO),
    "legacy_predict_unknown_model": ("POST", "/nosuch/predict", *HELLO),
    "legacy_predict_unknown_version": ("POST", "/answers/9.9/predict", *HELLO),
    "legacy_predict_predictions_version": ("POST", "/predictions/answers/predict", *HELLO),
    "options_legacy_predict": ("OPTIONS", "/answers/predict", b"", {}),
}

#: the same routes answered by TorchServe serving one model (`answers`): /invocations without
#: a model_name predicts with the only model it started with
SINGLE_MODEL_CASES: dict[str, tuple[str, str, bytes, dict]] = {
    "single_invocations_no_model_name": ("POST", "/invocations", *HELLO),
    "single_invocations_empty_model_name": ("POST", "/invocations?model_name=&k=1", *HELLO),
    "single_invocations_unknown_model": ("POST", "/invocations?model_name=nosuch", *HELLO),
    "single_options_invocations": ("OPTIONS", "/invocations", b"", {}),
}

#: an upload over max_request_size (TorchServe's default) that asks for 100-continue: its
#: head alone is sent, and the answer read until the server closes or EXPECT_WAIT_S pass
EXPECT_CASE = "expect_continue_too_large"
EXPECT_LENGTH = 6_553_500 + 1
EXPECT_WAIT_S = 3.0


def record_expect_continue(port: int) -> dict:
    """TorchServe's answer to the head of an upload over its size limit that expects
    100-continue: {"request", "status", "headers", "body_b64", "closed"} ("closed": whether
    it closed the connection within EXPECT_WAIT_S)."""
    head = (f"POST /predictions/answers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {EXPECT_LENGTH}\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()
    received, closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=EXPECT_WAIT_S) as sock:
        sock.sendall(head)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
    status_line, _, rest = received.partition(b"\r\n")
    fields, _, body = rest.partition(b"\r\n\r\n")
    headers = dict((name.strip().lower(), value.strip()) for name, _, value in
                   (line.decode().partition(":") for line in fields.split(b"\r\n") if line))
    return {"request": {"method": "POST", "path": "/predictions/answers",
                        "headers": {"Content-Length": str(EXPECT_LENGTH),
                                    "Expect": "100-continue"},
                        "body_b64": ""},
            "status": int(status_line.split()[1]), "headers": headers,
            "body_b64": base64.b64encode(body).decode(), "closed": closed}


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
            for case, (method, path, body, headers) in (CASES | METHOD_CASES).items():
                answers[case] = torchserve.record(method, path, body, headers)
            answers[EXPECT_CASE] = record_expect_continue(torchserve.inference_port)
        with TorchServe(store, {"answers": archives["answers"]}) as torchserve:
            for case, (method, path, body, headers) in SINGLE_MODEL_CASES.items():
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
