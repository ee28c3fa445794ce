"""api/inference_routes.py: the query's fields carried to the worker as form fields, the
model_name of a form body, and the routes' answers in process (falcon.testing) over the
stand-in client of the OpenAPI tests. What the handler then sees, compared with TorchServe's
recorded answers, is tests/integration/test_torchserve_routes.py's."""

from __future__ import annotations

import pytest

from tests.support.forms import multipart
from tests.unit.test_inference_openapi import FakeClient, call
from tests.unit.test_tracing import HeaderKeeper, traced_client
from zerobatch import token_keys
from zerobatch.api.http_app import create_app
from zerobatch.api.inference_routes import form_field, model_api, query_fields, with_fields
from zerobatch.config import FrontendConfig
from zerobatch.errors import BadRequest
from zerobatch.worker.forms import decode_form

URLENCODED = "application/x-www-form-urlencoded"


def fields_seen(body: bytes, content_type: str) -> dict:
    """The row the worker makes of a body (worker/forms.py), the values as bytes or as
    decoded."""
    decoded = decode_form(content_type, body)
    assert decoded is not None
    return {name: bytes(value) if isinstance(value, bytearray) else value
            for name, value in decoded[0].items()}


def test_query_fields_read_as_torchserves_decoder():
    assert query_fields("model_name=m&k=1&k=2&flag&a+b=c%20d") == {
        "model_name": ["m"], "k": ["1", "2"], "flag": [""], "a b": ["c d"]}
    assert query_fields("") == {}


def test_without_fields_the_body_is_unchanged():
    assert with_fields({}, b"x", "text/plain") == (b"x", "text/plain")


def test_a_raw_body_becomes_a_form_of_the_fields_and_the_body():
    body, content_type = with_fields({"model_name": ["m"], "k": ["1", "2"]}, b'{"a": 1}',
                                     "application/json")
    assert content_type.startswith("multipart/form-data; boundary=")
    assert fields_seen(body, content_type) == {"model_name": b"m", "k": b"2", "body": {"a": 1}}


def test_the_fields_come_before_a_url_encoded_body_s_own():
    body, content_type = with_fields({"q": ["1 2"], "model_name": ["m"]}, b"a=2&q=3", URLENCODED)
    assert content_type == URLENCODED
    assert fields_seen(body, content_type) == {"q": b"3", "model_name": b"m", "a": b"2"}


def test_the_fields_come_before_a_multipart_body_s_own_parts_after_its_preamble():
    boundary = "b0undary"
    form = multipart(boundary, ("data", "x.txt", "text/plain", b"abc"))
    content_type = f"multipart/form-data; boundary={boundary}"
    for original in (form, b"a preamble\r\n" + form):
        body, kept = with_fields({"q": ["1"], 'odd"name': ["2"]}, original, content_type)
        assert kept == content_type
        seen = fields_seen(body, content_type)
        assert seen == {"q": b"1", 'odd"name': b"2", "data": "abc"}
        assert list(seen) == ["q", 'odd"name', "data"]


def test_a_field_name_with_a_line_break_is_refused():
    with pytest.raises(BadRequest):
        with_fields({"a\r\nb": ["1"]}, b"x", "text/plain")


@pytest.mark.parametrize("body, content_type, expected", [
    (b"a=1&model_name=m&model_name=n", URLENCODED, "m"),
    (b"model_name=a+b", URLENCODED, "a b"),
    (b"a=1&model_name", URLENCODED, None),  # a last field without "=" is no field
    (multipart("B", ("model_name", None, None, b"m")), "multipart/form-data; boundary=B", "m"),
    (b"model_name=m", "text/plain", None),
    (b"model_name=m", "multipart/form-data", None),
])
def test_the_model_name_of_a_form_body(body, content_type, expected):
    assert form_field(body, content_type, "model_name") == expected


# ------------------------------------------------------------------ in process

@pytest.fixture
def app():
    return create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9", max_request_bytes=64),
                      client=FakeClient())


@pytest.mark.parametrize("path", ["/predictions/echo", "/predictions/echo/1.0/v1/models",
                                  "/explanations/echo/1.0", "/invocations?model_name=echo",
                                  "/invocations", "/models/echo/invoke", "/echo/predict",
                                  "/echo/1.0/predict"])
def test_options_answers_the_model_s_api_description(app, path):
    result = call(app, "OPTIONS", path)
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    assert result.content == model_api("echo")


@pytest.mark.parametrize("path, status, type_name", [
    ("/predictions/nosuch", 404, "ModelNotFoundException"),
    ("/predictions/echo/9.9", 404, "ModelVersionNotFoundException"),
    ("/invocations?model_name=nosuch", 404, "ModelNotFoundException"),
    ("/models/nosuch/invoke", 404, "ModelNotFoundException"),
])
def test_options_of_an_unknown_model_is_the_prediction_s_404(app, path, status, type_name):
    result = call(app, "OPTIONS", path)
    assert result.status_code == status and result.json["type"] == type_name


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD", "POST"])
@pytest.mark.parametrize("path", ["/predictions/echo", "/explanations/echo/1.0/x",
                                  "/invocations", "/invocations/", "/models/echo/invoke",
                                  "/echo/predict", "/echo/1.0/predict/"])
def test_every_method_predicts(app, method, path):
    result = call(app, method, path)
    assert result.status_code == 200, result.text
    assert result.content == (b"" if method == "HEAD" else b'{"echo": true}')


@pytest.mark.parametrize("path", ["/models/echo/predict", "/invocations/echo/predict",
                                  "/invocations/echo", "/models"])
def test_paths_torchserve_reads_before_the_legacy_one_are_not_found(app, path):
    result = call(app, "POST", path)
    assert result.status_code == 404 and result.json["type"] == "ResourceNotFoundException"


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "MKCOL", "QUERY"])
def test_every_other_method_predicts(app, method):
    assert call(app, method, "/predictions/echo").status_code == 200


def test_connect_is_refused(app):
    assert call(app, "CONNECT", "/predictions/echo").status_code == 405


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
                                    "PROPFIND"])
@pytest.mark.parametrize("path", ["/predictions/echo", "/explanations/echo",
                                  "/invocations?model_name=echo", "/models/echo/invoke",
                                  "/echo/predict"])
def test_the_inference_key_is_asked_on_every_method(tmp_path, method, path):
    key_file = str(tmp_path / "key_file.json")
    token_keys.create_key_file(key_file, 60)
    key = token_keys.read_keys(key_file).inference
    app = create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9", max_request_bytes=64,
                                    key_file=key_file), client=FakeClient())
    assert call(app, method, path).status_code == 400
    assert call(app, method, path, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_traced_invocation_reaches_the_worker_without_url_path_or_explain(spans):
    keeper = HeaderKeeper()
    result = traced_client(keeper).simulate_post("/invocations?model_name=echo&k=1",
                                                 body=b"1")
    assert result.status_code == 200
    (forwarded,) = keeper.forwarded
    assert "traceparent" in forwarded and "url_path" not in forwarded
    assert "explain" not in forwarded
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /invocations"
